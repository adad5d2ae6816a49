//! What a frontend reads from its request besides the build file: `--label`s, the proxy
//! build args and `SOURCE_DATE_EPOCH`, with BuildKit's rules.

use std::collections::BTreeMap;
use std::fmt;

use kiln_types::image::ImageConfig;

/// The prefix of the frontend options that carry `--label KEY=VALUE` (`label:KEY`).
pub const LABEL_OPTION_PREFIX: &str = "label:";

/// The proxy build args, which RUN steps see without any declaration and without being keyed
/// on them (BuildKit's; any case).
pub const PROXY_ARGS: [&str; 5] = [
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

/// Sets the `--label`s of a request's `options` on `config`: they win over the labels the build
/// file sets.
pub fn apply_labels(options: &BTreeMap<String, String>, config: &mut ImageConfig) {
    for (key, value) in options {
        if let Some(name) = key.strip_prefix(LABEL_OPTION_PREFIX) {
            config
                .config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(name.to_owned(), value.clone());
        }
    }
}

/// The [`PROXY_ARGS`] among `build_args`, as `KEY=VALUE` environment entries.
pub fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<String> {
    build_args
        .iter()
        .filter(|(k, _)| PROXY_ARGS.iter().any(|p| k.eq_ignore_ascii_case(p)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// A `SOURCE_DATE_EPOCH` that is no number of seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEpoch(pub String);

impl fmt::Display for InvalidEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SOURCE_DATE_EPOCH: {}", self.0)
    }
}

impl std::error::Error for InvalidEpoch {}

/// The value of `SOURCE_DATE_EPOCH` (seconds since 1970) as the RFC 3339 UTC time an image's
/// `created` and history get; `None` for an empty value.
pub fn source_date_epoch(value: &str) -> Result<Option<String>, InvalidEpoch> {
    if value.is_empty() {
        return Ok(None);
    }
    let seconds: i64 = value
        .trim()
        .parse()
        .map_err(|_| InvalidEpoch(value.to_owned()))?;
    Ok(Some(kiln_types::image::rfc3339_utc(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_proxies_and_epochs() {
        let platform = "linux/amd64".parse().unwrap();
        let mut config = ImageConfig::scratch(&platform);
        config.config.labels = Some(BTreeMap::from([("a".into(), "file".into())]));
        let options = BTreeMap::from([
            ("label:a".to_owned(), "flag".to_owned()),
            ("label:b".to_owned(), "2".to_owned()),
            ("context:x".to_owned(), "local:x".to_owned()),
        ]);
        apply_labels(&options, &mut config);
        assert_eq!(
            config.config.labels,
            Some(BTreeMap::from([
                ("a".into(), "flag".into()),
                ("b".into(), "2".into())
            ]))
        );
        let args = BTreeMap::from([
            ("HTTP_PROXY".to_owned(), "http://p".to_owned()),
            ("no_proxy".to_owned(), "x".to_owned()),
            ("VERSION".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(proxy_env(&args), ["HTTP_PROXY=http://p", "no_proxy=x"]);
        assert_eq!(source_date_epoch(""), Ok(None));
        assert_eq!(
            source_date_epoch(" 0 ").unwrap().as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            source_date_epoch("yesterday").unwrap_err().to_string(),
            "invalid SOURCE_DATE_EPOCH: yesterday"
        );
    }
}
