//! Markdown as LLMs write it → Telegram's HTML parse mode, and long answers split into
//! messages.
//!
//! The conversion is valid by construction: text is escaped (`&`, `<`, `>`), a tag is only
//! written together with its closing tag around content converted the same way, and code is
//! escaped text inside `<code>` or `<pre><code>`. A marker without its partner (`*`, `_`,
//! `` ` ``, `~~`, a link without its URL) stays as the literal character. Emphasis does not
//! cross lines, `_` inside a word (`snake_case`) is not emphasis, and code fences may be left
//! unclosed (the rest is code). Headings become bold, `-`/`*` bullets become `•`.
//!
//! [`split`] cuts an answer into pieces whose HTML fits one message ([`MAX_MESSAGE`] UTF-16
//! code units, Telegram's limit), on paragraph boundaries first, then between a code block's
//! lines (each piece re-fenced), then between lines, then words.

/// Telegram's limit for one message's text.
pub const MAX_MESSAGE: usize = 4096;

/// Escapes text for Telegram HTML.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Length as Telegram counts it.
pub fn telegram_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// One block of an answer.
#[derive(Debug, Clone, PartialEq)]
enum Block<'a> {
    /// Lines of prose (no blank line inside).
    Text(Vec<&'a str>),
    /// A fenced code block: its language and lines (fences excluded).
    Code { lang: &'a str, lines: Vec<&'a str> },
    /// One or more blank lines.
    Blank,
}

fn fence(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("```").map(|rest| {
        rest.trim()
            .split(|c: char| c.is_whitespace() || c == '`')
            .next()
            .unwrap_or_default()
    })
}

fn blocks(markdown: &str) -> Vec<Block<'_>> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    let mut text: Vec<&str> = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(lang) = fence(line) {
            if !text.is_empty() {
                blocks.push(Block::Text(std::mem::take(&mut text)));
            }
            let mut code = Vec::new();
            for line in lines.by_ref() {
                if line.trim_start().starts_with("```") {
                    break;
                }
                code.push(line);
            }
            blocks.push(Block::Code { lang, lines: code });
        } else if line.trim().is_empty() {
            if !text.is_empty() {
                blocks.push(Block::Text(std::mem::take(&mut text)));
            }
            if blocks.last() != Some(&Block::Blank) {
                blocks.push(Block::Blank);
            }
        } else {
            text.push(line);
        }
    }
    if !text.is_empty() {
        blocks.push(Block::Text(text));
    }
    blocks
}

/// Converts Markdown to Telegram HTML.
pub fn to_html(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 4);
    let mut first = true;
    for block in blocks(markdown) {
        match block {
            Block::Blank => {
                if !first {
                    out.push('\n');
                }
            }
            Block::Text(lines) => {
                if !first && !out.ends_with('\n') {
                    out.push('\n');
                }
                for (index, line) in lines.iter().enumerate() {
                    if index > 0 {
                        out.push('\n');
                    }
                    render_line(line, &mut out);
                }
                out.push('\n');
            }
            Block::Code { lang, lines } => {
                if !first && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("<pre>");
                if lang.is_empty() {
                    out.push_str("<code>");
                } else {
                    out.push_str("<code class=\"language-");
                    escape(lang, &mut out);
                    out.push_str("\">");
                }
                escape(&lines.join("\n"), &mut out);
                out.push_str("</code></pre>\n");
            }
        }
        first = false;
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

fn render_line(line: &str, out: &mut String) {
    let trimmed = line.trim_start();
    let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
        out.push_str("<b>");
        inline(trimmed[hashes..].trim(), out);
        out.push_str("</b>");
        return;
    }
    for bullet in ["- ", "* ", "+ "] {
        if let Some(item) = trimmed.strip_prefix(bullet) {
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str("• ");
            inline(item, out);
            return;
        }
    }
    inline(line, out);
}

/// Converts one line's inline Markdown.
fn inline(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    // Markers are ASCII, so every index where one is found is a char boundary.
    while i < bytes.len() {
        let found = match bytes[i] {
            b'`' => text[i + 1..].find('`').map(|len| {
                let end = i + 1 + len;
                let mut code = String::from("<code>");
                escape(&text[i + 1..end], &mut code);
                code.push_str("</code>");
                (code, end + 1)
            }),
            b'*' | b'_' | b'~' => emphasis(text, i),
            b'[' => link(text, i),
            _ => None,
        };
        match found {
            Some((html, next)) => {
                escape(&text[plain_from..i], out);
                out.push_str(&html);
                i = next;
                plain_from = next;
            }
            None => i += 1,
        }
    }
    escape(&text[plain_from..], out);
}

/// Emphasis opening at `start`: its HTML and where the text after it starts.
fn emphasis(text: &str, start: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let marker = bytes[start];
    let double = bytes.get(start + 1) == Some(&marker);
    let (width, tag) = match (marker, double) {
        (b'~', true) => (2, "s"),
        (b'~', false) => return None,
        (_, true) => (2, "b"),
        (_, false) => (1, "i"),
    };
    let word_char = |index: Option<usize>| {
        index
            .and_then(|index| text[index..].chars().next())
            .is_some_and(char::is_alphanumeric)
    };
    let previous = text[..start].chars().next_back();
    // `_` inside a word is not emphasis.
    if marker == b'_' && previous.is_some_and(char::is_alphanumeric) {
        return None;
    }
    let content_start = start + width;
    if text[content_start..]
        .chars()
        .next()
        .is_none_or(char::is_whitespace)
    {
        return None;
    }
    let mut search = content_start + 1;
    while search + width <= bytes.len() {
        let at = search;
        search += 1;
        // A code span is opaque: a marker inside it closes nothing.
        if bytes[at] == b'`'
            && let Some(len) = text[at + 1..].find('`')
        {
            search = at + 1 + len + 1;
            continue;
        }
        if bytes[at] != marker {
            continue;
        }
        let run_ok = if width == 2 {
            bytes.get(at + 1) == Some(&marker)
        } else {
            bytes.get(at + 1) != Some(&marker) && bytes[at - 1] != marker
        };
        let before_ok = !bytes[at - 1].is_ascii_whitespace();
        let after_ok = marker != b'_' || !word_char(Some(at + width).filter(|i| *i < bytes.len()));
        if run_ok && before_ok && after_ok {
            let mut html = format!("<{tag}>");
            inline(&text[content_start..at], &mut html);
            html.push_str(&format!("</{tag}>"));
            return Some((html, at + width));
        }
    }
    None
}

/// A `[text](https://…)` link opening at `start`.
fn link(text: &str, start: usize) -> Option<(String, usize)> {
    let close = start + text[start..].find("](")?;
    let label = &text[start + 1..close];
    let url_start = close + 2;
    let url_end = url_start + text[url_start..].find(')')?;
    let url = &text[url_start..url_end];
    let safe = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(char::is_whitespace);
    if label.is_empty() || label.contains('[') || !safe {
        return None;
    }
    let mut html = String::from("<a href=\"");
    escape(url, &mut html);
    html.push_str("\">");
    inline(label, &mut html);
    html.push_str("</a>");
    Some((html, url_end + 1))
}

/// Cuts `markdown` into pieces whose HTML each fits in `limit` UTF-16 code units, on
/// paragraph boundaries where it can. Every piece is non-empty.
pub fn split(markdown: &str, limit: usize) -> Vec<String> {
    let fits = |piece: &str| telegram_len(&to_html(piece)) <= limit;
    if fits(markdown) {
        return if markdown.trim().is_empty() {
            Vec::new()
        } else {
            vec![markdown.trim_end().to_owned()]
        };
    }
    // Pieces small enough on their own, in order.
    let mut units: Vec<String> = Vec::new();
    for block in blocks(markdown) {
        match block {
            Block::Blank => {}
            Block::Text(lines) => {
                let paragraph = lines.join("\n");
                if fits(&paragraph) {
                    units.push(paragraph);
                } else {
                    for line in lines {
                        if fits(line) {
                            units.push(line.to_owned());
                        } else {
                            units.extend(split_words(line, &fits));
                        }
                    }
                }
            }
            Block::Code { lang, lines } => {
                let fenced = |lines: &[&str]| format!("```{lang}\n{}\n```", lines.join("\n"));
                let mut current: Vec<&str> = Vec::new();
                for line in lines {
                    current.push(line);
                    if !fits(&fenced(&current)) {
                        current.pop();
                        if !current.is_empty() {
                            units.push(fenced(&current));
                            current.clear();
                        }
                        if fits(&fenced(&[line])) {
                            current.push(line);
                        } else {
                            // A single line too long for a message: as prose, cut by words.
                            units.extend(split_words(line, &fits));
                        }
                    }
                }
                if !current.is_empty() {
                    units.push(fenced(&current));
                }
            }
        }
    }
    // Pack the pieces back together, a blank line apart.
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    for unit in units {
        if current.is_empty() {
            current = unit;
            continue;
        }
        let joined = format!("{current}\n\n{unit}");
        if fits(&joined) {
            current = joined;
        } else {
            pieces.push(std::mem::replace(&mut current, unit));
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current);
    }
    pieces.retain(|piece| !piece.trim().is_empty());
    pieces
}

/// Cuts one over-long line between words (between characters for a giant word).
fn split_words(line: &str, fits: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for word in line.split_inclusive(' ') {
        let candidate = format!("{current}{word}");
        if fits(&candidate) {
            current = candidate;
            continue;
        }
        if !current.trim().is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        current.clear();
        if fits(word) {
            current.push_str(word);
        } else {
            for c in word.chars() {
                current.push(c);
                if !fits(&current) {
                    current.pop();
                    pieces.push(std::mem::take(&mut current));
                    current.push(c);
                }
            }
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current);
    }
    pieces
}

/// A plain-text preview of a growing answer, cut to fit one message.
pub fn preview(text: &str) -> String {
    if telegram_len(text) <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut units = 0;
    for c in text.chars() {
        units += c.len_utf16();
        if units > MAX_MESSAGE - 1 {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_testkit::telegram::html;

    fn valid(markdown: &str) -> String {
        let html = to_html(markdown);
        if let Err(problem) = html::parse(&html) {
            panic!("{markdown:?} → {html:?}: {problem}");
        }
        html
    }

    #[test]
    fn converts_the_usual_markdown() {
        assert_eq!(
            valid("**bold** and *it* and _it_ and `x<y` and ~~gone~~"),
            "<b>bold</b> and <i>it</i> and <i>it</i> and <code>x&lt;y</code> and <s>gone</s>"
        );
        assert_eq!(valid("# Title\n- one\n- two"), "<b>Title</b>\n• one\n• two");
        assert_eq!(
            valid("see [docs](https://x.y/?a=1&b=2)"),
            "see <a href=\"https://x.y/?a=1&amp;b=2\">docs</a>"
        );
        assert_eq!(
            valid("```rust\nfn main() { a < b && c }\n```"),
            "<pre><code class=\"language-rust\">fn main() { a &lt; b &amp;&amp; c }</code></pre>"
        );
        assert_eq!(
            valid("**bold with *italic* inside**"),
            "<b>bold with <i>italic</i> inside</b>"
        );
    }

    #[test]
    fn edge_cases_stay_valid_and_literal() {
        assert_eq!(valid("2 * 3 * 4"), "2 * 3 * 4");
        assert_eq!(valid("snake_case_name"), "snake_case_name");
        assert_eq!(valid("unbalanced *star"), "unbalanced *star");
        assert_eq!(valid("unbalanced _under"), "unbalanced _under");
        assert_eq!(valid("a < b & c > d"), "a &lt; b &amp; c &gt; d");
        assert_eq!(valid("`unclosed code"), "`unclosed code");
        assert_eq!(valid("**a *b** c*"), "<b>a *b</b> c*");
        assert_eq!(
            valid("**bold *x `co*de` y**"),
            "<b>bold *x <code>co*de</code> y</b>"
        );
        assert_eq!(
            valid("```\nunclosed <fence>"),
            "<pre><code>unclosed &lt;fence&gt;</code></pre>"
        );
        assert_eq!(
            valid("[x](javascript:alert(1))"),
            "[x](javascript:alert(1))"
        );
        for text in [
            "*",
            "**",
            "_",
            "__",
            "`",
            "``",
            "~~",
            "***",
            "*_*_",
            "_*_*",
            "**`**`**",
            "<b>",
            "&amp;",
            "[a](",
            "[](https://x)",
            "*a\nb*",
            "``` ```",
            "`a`b`",
            "a**",
            "**a",
            "\u{1F600}*x*\u{1F600}",
            "é_à_ü",
        ] {
            valid(text);
        }
    }

    #[test]
    fn long_answers_split_on_paragraphs_and_code() {
        let paragraph = "word ".repeat(100);
        let text = [paragraph.trim(); 12].join("\n\n");
        let pieces = split(&text, MAX_MESSAGE);
        assert_eq!(pieces.len(), 2);
        for piece in &pieces {
            assert!(telegram_len(&valid(piece)) <= MAX_MESSAGE);
            assert!(piece.starts_with("word") && piece.ends_with("word"));
        }
        let code = format!("```python\n{}```", "print('x < y')\n".repeat(400));
        let pieces = split(&code, MAX_MESSAGE);
        assert!(pieces.len() >= 2);
        for piece in &pieces {
            let html = valid(piece);
            assert!(telegram_len(&html) <= MAX_MESSAGE);
            assert!(
                html.starts_with("<pre><code class=\"language-python\">"),
                "{html}"
            );
        }
        let giant = "x".repeat(10_000);
        let pieces = split(&giant, MAX_MESSAGE);
        assert_eq!(pieces.concat(), giant);
        assert!(split("  \n", MAX_MESSAGE).is_empty());
    }

    #[test]
    fn previews_fit() {
        let long = "é".repeat(5000);
        assert_eq!(telegram_len(&preview(&long)), MAX_MESSAGE);
        assert_eq!(preview("short"), "short");
    }

    proptest::proptest! {
        #[test]
        fn any_markdown_gives_valid_html_that_splits_to_fit(
            text in "[a-z _*`~#\\[\\]()<>&\\n-]{0,300}",
            limit in 40usize..200,
        ) {
            valid(&text);
            for piece in split(&text, limit) {
                let html = valid(&piece);
                proptest::prop_assert!(telegram_len(&html) <= limit, "{piece:?} → {html:?}");
            }
        }
    }
}
