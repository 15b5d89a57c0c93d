//! Turns the TOML decoder's messages into ones that name the key and say what to write.

use std::ops::Range;

/// How far (in edits) a misspelt key may be from a known one to be suggested.
const MAX_SUGGESTION_DISTANCE: usize = 3;

/// Rewrites a decoder message about the value or key at `span` of `text`.
///
/// Messages this module does not recognise are returned unchanged: a plain message is better
/// than a wrong hint.
pub(super) fn rewrite(message: &str, text: &str, span: Option<Range<usize>>) -> String {
    if let Some(rewritten) = unknown_name(message, "field", "key", "the keys allowed here are") {
        return rewritten;
    }
    if let Some(rewritten) = unknown_name(message, "variant", "value", "write one of") {
        return rewritten;
    }
    if let Some(span) = span
        && let Some(rewritten) = invalid_type(message, text, span)
    {
        return rewritten;
    }
    message.to_owned()
}

/// `unknown field `polcy`, expected one of `a`, `b`` → a "did you mean" and the list (and the
/// same for a `variant`, a value of a key that takes one of a few words).
fn unknown_name(
    message: &str,
    decoder_word: &str,
    our_word: &str,
    list_words: &str,
) -> Option<String> {
    let rest = message.strip_prefix(&format!("unknown {decoder_word} `"))?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = match rest.strip_prefix(", expected one of ") {
        Some(list) => quoted_words(list),
        None => quoted_words(rest.strip_prefix(", expected ")?),
    };
    let suggestion = closest(key, &expected)
        .map(|known| format!("did you mean `{known}`? "))
        .unwrap_or_default();
    let list = expected
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "unknown {our_word} `{key}`; {suggestion}{list_words} {list}"
    ))
}

/// The words between backticks in `list`.
fn quoted_words(list: &str) -> Vec<&str> {
    list.split('`').skip(1).step_by(2).collect()
}

/// The known key nearest to `key`, if it is near enough to be a typo of it.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(key, candidate), *candidate))
        .filter(|(distance, candidate)| {
            *distance <= MAX_SUGGESTION_DISTANCE && *distance < candidate.len().max(key.len())
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `invalid type: string "500ms", expected u64` → names the key, the form it takes and an
/// example, converting the value when it can (`"500ms"` → `500`).
fn invalid_type(message: &str, text: &str, span: Range<usize>) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (found, expected) = rest.rsplit_once(", expected ")?;
    let key = key_before(text, span.start)?;
    let value = text.get(span.clone()).unwrap_or("").trim();
    let form = Form::of(expected)?;
    let example = form.example(key, value);
    Some(format!(
        "`{key}` takes {}, not {found}; write e.g. `{key} = {example}`",
        form.words(key)
    ))
}

/// The key whose value starts at `offset`: the bare or quoted key before the `=` that precedes
/// it on its line (or in its inline table).
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let head = before[line_start..].trim_end();
    let head = head.strip_suffix('=')?.trim_end();
    let start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| c == '{' || c == ',' || c == '[' || c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = head[start..].trim_matches('"');
    (!key.is_empty()).then_some(key)
}

/// The kinds of value the config's keys take, as the decoder names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    WholeNumber,
    Number,
    Bool,
    Text,
    List,
}

impl Form {
    fn of(expected: &str) -> Option<Form> {
        Some(match expected {
            "u8" | "u16" | "u32" | "u64" | "usize" | "i64" => Form::WholeNumber,
            "f64" | "f32" => Form::Number,
            "a boolean" => Form::Bool,
            "a string" => Form::Text,
            "a sequence" => Form::List,
            _ => return None,
        })
    }

    fn words(self, key: &str) -> &'static str {
        match self {
            Form::WholeNumber if key.ends_with("_ms") => "whole milliseconds",
            Form::WholeNumber if key.ends_with("_bytes") => "a whole number of bytes",
            Form::WholeNumber if key.ends_with("_percent") => "a whole percentage (0 to 100)",
            Form::WholeNumber => "a whole number",
            Form::Number => "a number",
            Form::Bool => "true or false (without quotes)",
            Form::Text => "text in double quotes",
            Form::List => "a list in brackets",
        }
    }

    fn example(self, key: &str, value: &str) -> String {
        match self {
            Form::WholeNumber if key.ends_with("_ms") => {
                milliseconds(value).map_or_else(|| "500".to_owned(), |ms| ms.to_string())
            }
            Form::WholeNumber => whole_number(value).unwrap_or_else(|| "10".to_owned()),
            Form::Number => "0.2".to_owned(),
            Form::Bool => match value.trim_matches('"') {
                "false" | "no" | "off" | "0" => "false".to_owned(),
                _ => "true".to_owned(),
            },
            Form::Text => format!("\"{}\"", value.trim_matches(['"', '\''])),
            Form::List => format!("[{value}]"),
        }
    }
}

/// A quoted duration such as `"500ms"`, `"2s"` or `"1m"` in milliseconds.
fn milliseconds(value: &str) -> Option<u64> {
    let value = value.trim_matches(['"', '\'']).trim();
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let number: u64 = value[..digits_end].parse().ok()?;
    let per_unit = match value[digits_end..].trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(per_unit)
}

/// A quoted or fractional whole number (`"8"`, `8.0`) as the bare digits to write.
fn whole_number(value: &str) -> Option<String> {
    let value = value.trim_matches(['"', '\'']).trim();
    let value = value.strip_suffix(".0").unwrap_or(value);
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_of(text: &str, needle: &str) -> Option<Range<usize>> {
        let start = text.find(needle)?;
        Some(start..start + needle.len())
    }

    #[test]
    fn a_typo_gets_the_nearest_key() {
        let message = "unknown field `polcy`, expected one of `listen`, `policy`, `pools`";
        let rewritten = rewrite(message, "", None);
        assert!(
            rewritten.starts_with("unknown key `polcy`; did you mean `policy`?"),
            "{rewritten}"
        );
        assert!(rewritten.contains("`pools`"), "{rewritten}");
    }

    #[test]
    fn a_key_far_from_every_known_one_gets_no_guess() {
        let message = "unknown field `colour`, expected one of `path`, `max_bytes`";
        let rewritten = rewrite(message, "", None);
        assert!(!rewritten.contains("did you mean"), "{rewritten}");
        assert!(rewritten.contains("`max_bytes`"), "{rewritten}");
    }

    #[test]
    fn a_misspelt_value_of_a_few_words_gets_the_nearest() {
        let message = "unknown variant `jsn`, expected `text` or `json`";
        let rewritten = rewrite(message, "", None);
        assert_eq!(
            rewritten,
            "unknown value `jsn`; did you mean `json`? write one of `text`, `json`"
        );
    }

    #[test]
    fn a_single_expected_key_is_listed() {
        let rewritten = rewrite("unknown field `windw_ms`, expected `window_ms`", "", None);
        assert!(
            rewritten.contains("did you mean `window_ms`?"),
            "{rewritten}"
        );
    }

    #[test]
    fn a_duration_with_a_unit_is_converted_to_milliseconds() {
        let text = "[pools.a.health_check]\ninterval_ms = \"2s\"\n";
        let message = "invalid type: string \"2s\", expected u64";
        let rewritten = rewrite(message, text, span_of(text, "\"2s\""));
        assert_eq!(
            rewritten,
            "`interval_ms` takes whole milliseconds, not string \"2s\"; \
             write e.g. `interval_ms = 2000`"
        );
    }

    #[test]
    fn keys_in_inline_tables_are_found() {
        let text = "global = { rate_per_s = \"100\", burst = 5 }\n";
        let message = "invalid type: string \"100\", expected u32";
        let rewritten = rewrite(message, text, span_of(text, "\"100\""));
        assert!(
            rewritten.starts_with("`rate_per_s` takes a whole number"),
            "{rewritten}"
        );
        assert!(rewritten.ends_with("`rate_per_s = 100`"), "{rewritten}");
    }

    #[test]
    fn booleans_and_text_say_how_to_write_them() {
        let text = "retry_non_idempotent = \"yes\"\n";
        let rewritten = rewrite(
            "invalid type: string \"yes\", expected a boolean",
            text,
            span_of(text, "\"yes\""),
        );
        assert!(rewritten.contains("true or false"), "{rewritten}");
        assert!(
            rewritten.ends_with("`retry_non_idempotent = true`"),
            "{rewritten}"
        );

        let text = "policy = 5\n";
        let rewritten = rewrite(
            "invalid type: integer `5`, expected a string",
            text,
            span_of(text, "5"),
        );
        assert!(rewritten.contains("text in double quotes"), "{rewritten}");
    }

    #[test]
    fn a_key_with_wide_characters_does_not_split_one() {
        // U+3000 is whitespace of three bytes; a byte after its first is no char boundary.
        let text = "\"a\u{3000}b\" = \"x\"\n";
        let message = "invalid type: string \"x\", expected u64";
        let rewritten = rewrite(message, text, span_of(text, "\"x\""));
        assert!(
            rewritten.starts_with("`b` takes a whole number"),
            "{rewritten}"
        );
        // The whole file through the config parser: an error, no panic.
        assert!(
            crate::Config::from_toml_str(
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n\"w\u{3000}x\" = 1\n",
                "t.toml"
            )
            .is_err()
        );
    }

    #[test]
    fn unrecognised_messages_pass_through() {
        assert_eq!(
            rewrite("expected `=`", "a b", Some(0..1)),
            "expected `=`".to_owned()
        );
    }

    #[test]
    fn milliseconds_parse_units_and_refuse_others() {
        assert_eq!(milliseconds("\"500ms\""), Some(500));
        assert_eq!(milliseconds("\"1m\""), Some(60_000));
        assert_eq!(milliseconds("\"5 parsecs\""), None);
        assert_eq!(milliseconds("\"\""), None);
    }
}
