//! Chat templates: `tokenizer_config.json`'s `chat_template` (or `chat_template.jinja`),
//! rendered with minijinja the way transformers renders them (`trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`, `strftime_now`).

use std::path::Path;

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
}

/// A chat template and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct ChatTemplate {
    source: String,
    origin: String,
}

impl ChatTemplate {
    pub(crate) fn new(source: String, origin: String) -> Self {
        Self { source, origin }
    }

    /// The template's text.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The template of a `tokenizer_config.json`: a string, or a list of named templates of
    /// which `default` is taken (the older layout).
    pub(crate) fn from_config(config: &Value, path: &Path) -> Result<Option<Self>> {
        let origin = path.display().to_string();
        let bad = |message: String| Error::ChatTemplate {
            path: origin.clone(),
            message,
        };
        match config.get("chat_template") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(Self::new(s.clone(), origin.clone()))),
            Some(Value::Array(list)) => {
                let named = |name: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                };
                let chosen = named("default").ok_or_else(|| {
                    bad("a list of templates without one named \"default\"".into())
                })?;
                let source = chosen
                    .get("template")
                    .and_then(Value::as_str)
                    .ok_or_else(
                        || bad("the \"default\" entry has no \"template\" string".into()),
                    )?;
                Ok(Some(Self::new(source.to_string(), origin.clone())))
            }
            Some(other) => Err(bad(format!("expected a string or a list, found {other}"))),
        }
    }

    /// Renders the template for `messages`.
    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let bad = |e: minijinja::Error| Error::ChatTemplate {
            path: self.origin.clone(),
            message: describe(&e),
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template("chat", &self.source).map_err(bad)?;
        let template = env.get_template("chat").map_err(bad)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(bad)
    }
}

/// A minijinja error with its line, for messages.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{} (line {line})", e),
        None => e.to_string(),
    }
}

/// Today (UTC) in the few `strftime` codes chat templates use: `%d`, `%m`, `%Y`, `%y`, `%b`,
/// `%B`, `%%`; others are kept as written.
fn strftime_now(format: &str) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn templates_render_as_transformers_does() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m['role'] | upper }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}".into(),
            "t".into(),
        );
        let out = t
            .render(&[ChatMessage::user(" hi ")], true, "<s>", "</s>")
            .unwrap();
        // What jinja2 renders with trim_blocks and lstrip_blocks, as transformers sets them.
        assert_eq!(out, "  USER: hi\nA:");
        let indented = ChatTemplate::new(
            "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}".into(),
            "t".into(),
        );
        assert_eq!(
            indented
                .render(&[ChatMessage::user("x")], false, "", "")
                .unwrap(),
            "x\n"
        );
        let failing =
            ChatTemplate::new("{{ raise_exception('no system role') }}".into(), "t".into());
        let e = failing.render(&[], false, "", "").unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
        let broken = ChatTemplate::new("{% for %}".into(), "cfg.json".into());
        let e = broken.render(&[], false, "", "").unwrap_err().to_string();
        assert!(e.starts_with("cfg.json: chat template:"), "{e}");
    }
}
