//! Lists as the Management API pages them, so the SDKs' paginators work
//! against the sandbox: offset pages (`page`, `per_page`, `include_totals`
//! → `{KEY: […], start, limit, total}`), checkpoints (`from`, `take` →
//! `{KEY: […], next}`), and a bare array when neither is asked for.

use http::StatusCode;
use serde_json::{Value, json};

use super::state::error;

/// The most entries one page holds (Auth0's limit).
const MAX_PER_PAGE: usize = 100;

/// The query's parameters, percent-decoded (`+` is a space).
pub(super) fn params(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `items`, paged as the query asks. `checkpoint`: the endpoint supports
/// `from`/`take` (organizations, connections, client grants).
pub(super) fn list(
    items: Vec<Value>,
    query: Option<&str>,
    key: &str,
    checkpoint: bool,
) -> (StatusCode, Value) {
    let params = params(query);
    let number = |name: &str, default: usize| match get(&params, name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("Query validation error: '{name}' must be an integer"),
                Some("invalid_query_string"),
            )
        }),
    };
    let totals = get(&params, "include_totals") == Some("true");
    if checkpoint && (get(&params, "from").is_some() || get(&params, "take").is_some()) {
        let take = match number("take", 50) {
            Ok(t) => t.clamp(1, MAX_PER_PAGE),
            Err(e) => return e,
        };
        // `from` is the id the page starts at; `next`, the id after it.
        let start = match get(&params, "from").filter(|f| !f.is_empty()) {
            None => 0,
            Some(from) => match items.iter().position(|i| i["id"] == from) {
                Some(p) => p,
                None => return (StatusCode::OK, json!({ key: [] })),
            },
        };
        let end = (start + take).min(items.len());
        let mut page = json!({ key: items[start..end] });
        if let Some(next) = items.get(end) {
            page["next"] = next["id"].clone();
        }
        return (StatusCode::OK, page);
    }
    if !totals && get(&params, "page").is_none() && get(&params, "per_page").is_none() {
        return (StatusCode::OK, Value::Array(items));
    }
    let (page, per_page) = match (number("page", 0), number("per_page", 50)) {
        (Ok(p), Ok(n)) => (p, n.clamp(1, MAX_PER_PAGE)),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let total = items.len();
    let start = page.saturating_mul(per_page).min(total);
    let end = (start + per_page).min(total);
    let slice = Value::Array(items[start..end].to_vec());
    if totals {
        (
            StatusCode::OK,
            json!({ key: slice, "start": start, "limit": per_page, "total": total }),
        )
    } else {
        (StatusCode::OK, slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"id": format!("x{i}")})).collect()
    }

    #[test]
    fn offset_pages_carry_totals() {
        let (_, v) = list(
            items(5),
            Some("page=1&per_page=2&include_totals=true"),
            "k",
            false,
        );
        assert_eq!(
            v,
            json!({"k": [{"id": "x2"}, {"id": "x3"}], "start": 2, "limit": 2, "total": 5})
        );
        let (_, v) = list(items(5), Some("page=9&per_page=2"), "k", false);
        assert_eq!(v, json!([]));
        let (_, v) = list(items(3), None, "k", false);
        assert_eq!(v.as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn checkpoints_lead_to_the_end() {
        let mut seen = Vec::new();
        let mut query = "include_totals=true&take=2".to_owned();
        loop {
            let (_, v) = list(items(5), Some(&query), "k", true);
            seen.extend(v["k"].as_array().cloned().unwrap_or_default());
            match v.get("next").and_then(Value::as_str) {
                Some(next) => query = format!("take=2&from={next}"),
                None => break,
            }
        }
        assert_eq!(seen, items(5));
    }

    #[test]
    fn a_bad_number_is_a_400() {
        let (s, v) = list(items(1), Some("per_page=many"), "k", false);
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["errorCode"], "invalid_query_string");
    }
}
