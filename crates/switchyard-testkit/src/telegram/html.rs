//! Telegram's HTML parse mode, checked the way the Bot API checks it: only its tags, each
//! closed in order, `<`, `>` and `&` escaped outside tags (as `&lt;`, `&gt;`, `&amp;`,
//! `&quot;` or a numeric reference), attributes quoted, nothing inside `<code>` or `<pre>`
//! except `<pre><code class="language-…">`. [`parse`] returns the visible text, whose length
//! is what Telegram limits.

/// Tags Telegram accepts.
const TAGS: [&str; 16] = [
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
];

/// Parses `text` as Telegram HTML; the visible text, or what is wrong (Telegram's wording
/// is `can't parse entities: …`).
pub fn parse(text: &str) -> Result<String, String> {
    let mut visible = String::with_capacity(text.len());
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let Some(end) = rest.find('>') else {
                    return Err(format!(
                        "unclosed start tag at byte offset {}",
                        text.len() - rest.len()
                    ));
                };
                let tag = &rest[1..end];
                rest = &rest[end + 1..];
                if let Some(name) = tag.strip_prefix('/') {
                    let name = name.trim();
                    match open.pop() {
                        Some(last) if last == name => {}
                        Some(last) => {
                            return Err(format!(
                                "can't find end tag corresponding to start tag \"{last}\""
                            ));
                        }
                        None => return Err(format!("unmatched end tag \"{name}\"")),
                    }
                } else {
                    let name = start_tag(tag)?;
                    if let Some(parent) = open.last()
                        && (parent == "code" || (parent == "pre" && name != "code"))
                    {
                        return Err(format!("tag \"{name}\" inside \"{parent}\" is not allowed"));
                    }
                    open.push(name);
                }
            }
            '&' => {
                let Some(end) = rest.find(';').filter(|end| *end <= 10) else {
                    return Err("unsupported entity: & must be escaped as &amp;".to_owned());
                };
                let entity = &rest[1..end];
                let decoded = match entity {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "quot" => '"',
                    _ => numeric(entity)
                        .ok_or_else(|| format!("unsupported HTML entity \"&{entity};\""))?,
                };
                visible.push(decoded);
                rest = &rest[end + 1..];
            }
            '>' => return Err("a > outside a tag must be escaped as &gt;".to_owned()),
            c => {
                visible.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    match open.pop() {
        Some(unclosed) => Err(format!(
            "can't find end tag corresponding to start tag \"{unclosed}\""
        )),
        None => Ok(visible),
    }
}

/// The name of a start tag `tag` (between `<` and `>`), checking its attributes.
fn start_tag(tag: &str) -> Result<String, String> {
    let name: String = tag
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if !TAGS.contains(&name.as_str()) {
        return Err(format!("unsupported start tag \"{name}\""));
    }
    let mut attributes = tag[name.len()..].trim();
    while !attributes.is_empty() {
        let Some(eq) = attributes.find('=') else {
            // A bare attribute: only `<blockquote expandable>`.
            if name == "blockquote" && attributes == "expandable" {
                break;
            }
            return Err(format!("bad attribute in tag \"{name}\""));
        };
        let value = attributes[eq + 1..].trim_start();
        let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'');
        let Some(quote) = quote else {
            return Err(format!("unquoted attribute value in tag \"{name}\""));
        };
        let Some(close) = value[1..].find(quote) else {
            return Err(format!("unclosed attribute value in tag \"{name}\""));
        };
        if value[1..1 + close].contains('<') {
            return Err(format!("< in an attribute of tag \"{name}\""));
        }
        attributes = value[close + 2..].trim_start();
    }
    Ok(name)
}

fn numeric(entity: &str) -> Option<char> {
    let digits = entity.strip_prefix('#')?;
    let code = match digits
        .strip_prefix('x')
        .or_else(|| digits.strip_prefix('X'))
    {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_telegram_html() {
        assert_eq!(
            parse("a <b>b</b> &lt;c&gt; &amp; &#65;").as_deref(),
            Ok("a b <c> & A")
        );
        assert_eq!(
            parse("<pre><code class=\"language-rust\">fn x() {}</code></pre>").as_deref(),
            Ok("fn x() {}")
        );
        assert_eq!(
            parse("<a href=\"https://x.y/?a=1&amp;b=2\"><i>x</i></a>").as_deref(),
            Ok("x")
        );
    }

    #[test]
    fn refuses_what_telegram_refuses() {
        for bad in [
            "a < b",
            "a & b",
            "1 > 0",
            "<b>x",
            "<b><i>x</b></i>",
            "</b>",
            "<div>x</div>",
            "<code><b>x</b></code>",
            "&nbsp;",
            "<a href=x>y</a>",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
