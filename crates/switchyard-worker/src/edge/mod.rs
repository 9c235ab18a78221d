//! The Worker itself (wasm32 only).
