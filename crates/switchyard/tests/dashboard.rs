//! The dashboard's files over real sockets: served without auth from the binary, with a
//! strict Content-Security-Policy and revalidation, and never accounted as API traffic. (The
//! page itself is tested in a real browser by scripts/dashboard-tests.sh.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    PROVIDER_KEYS, TestGateway, client, header, logged_requests, post_json, three_formats,
};
use serde_json::json;
use switchyard_testkit::mock::MockProvider;

const MASTER: &str = "dashboard-master-key";

async fn gateway() -> (TestGateway, switchyard_testkit::mock::MockHandle) {
    let mock = MockProvider::builder()
        .name("alpha")
        .expect_api_key("provider-key")
        .spawn()
        .await
        .unwrap();
    let mut env = PROVIDER_KEYS.to_vec();
    env.push(("MASTER", MASTER));
    let gateway = TestGateway::start(
        &three_formats(&mock.base_url(), "[server]\nmaster_key_env = \"MASTER\"\n"),
        &env,
    )
    .await;
    (gateway, mock)
}

#[tokio::test]
async fn the_page_and_its_files_are_served_without_auth_under_a_strict_policy() {
    let (gateway, _mock) = gateway().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = no_redirects
        .get(gateway.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(header(bare.headers(), "location"), "/dashboard/");

    let page = client()
        .get(gateway.url("/dashboard/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(&headers, "x-frame-options"), "DENY");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/app.js") && html.contains("/dashboard/app.css"));
    // Everything the page loads is the gateway's own: no CDN.
    assert!(
        !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let response = client()
            .get(gateway.url(&format!("/dashboard/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(header(response.headers(), "content-type"), content_type);
        let etag = header(response.headers(), "etag").to_owned();
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("https://"),
            "{file} loads nothing from elsewhere"
        );
        // Revalidation with the ETag answers 304 without the body.
        let again = client()
            .get(gateway.url(&format!("/dashboard/{file}")))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
        assert!(again.text().await.unwrap().is_empty());
    }
    let missing = client()
        .get(gateway.url("/dashboard/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The data behind it still needs the admin key.
    let refused = client()
        .get(gateway.url("/admin/providers"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

#[tokio::test]
async fn loading_the_dashboard_is_not_api_traffic() {
    let (gateway, _mock) = gateway().await;
    for path in [
        "/dashboard",
        "/dashboard/",
        "/dashboard/app.js",
        "/dashboard/app.css",
    ] {
        client().get(gateway.url(path)).send().await.unwrap();
    }
    let (status, _, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}),
        &[("authorization", &format!("Bearer {MASTER}"))],
    )
    .await;
    assert_eq!(status, 200);
    let rows = logged_requests(&gateway, Some(MASTER), 1).await;
    let endpoints: Vec<&str> = rows
        .iter()
        .map(|row| row["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, ["/v1/chat/completions"]);
}
