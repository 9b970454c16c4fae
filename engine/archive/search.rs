//! What a search of the archive is made of, as a user writes it: times (`2h` back, or RFC 3339)
//! and `FIELD=VALUE` conditions on a pipeline's index fields. Shared by `engine events` and the
//! console's Events page.

use std::collections::BTreeMap;

/// What is wrong with a search as the user wrote it: the words say what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("`{0}` is neither a span (`2h`, `7d`) nor an RFC 3339 time")]
    Time(String),
    #[error("`--where {0}`: write it as FIELD=VALUE")]
    NotACondition(String),
    #[error(
        "`{field}`: pipeline `{pipeline}` indexes no fields; add `archive: {{index: {{{field}: ...}}}}` to its YAML (events archived from then on can be found by it)"
    )]
    NothingIndexed { field: String, pipeline: String },
    #[error(
        "`{field}` is not an index field of `{pipeline}` (it has {indexed}); add it under `archive.index` to find events archived from then on"
    )]
    NotIndexed {
        field: String,
        pipeline: String,
        indexed: String,
    },
    #[error("pipeline `{0}` has `archive: off`: nothing is archived")]
    ArchiveOff(String),
    #[error("outcome `{0}`: one of written, dropped, dead, retrying, failed")]
    Outcome(String),
    #[error("no pipeline `{0}`")]
    NoPipeline(String),
}

/// A time given as a span back from now or an RFC 3339 time, in Unix ms.
pub fn time_arg(text: &str, now_ms: i64) -> Result<i64, SearchError> {
    if let Some(span) = crate::config::units::Span::parse(text) {
        return Ok(now_ms - span.0.as_millis() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| SearchError::Time(text.to_string()))
}

/// `FIELD=VALUE` conditions, each field one of `indexed` (when given).
pub fn conditions(
    list: &[String],
    indexed: &[&str],
    pipeline: &str,
) -> Result<BTreeMap<String, String>, SearchError> {
    let mut out = BTreeMap::new();
    for c in list {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| SearchError::NotACondition(c.clone()))?;
        if !indexed.contains(&k) {
            let (field, pipeline) = (k.to_string(), pipeline.to_string());
            return Err(match indexed.is_empty() {
                true => SearchError::NothingIndexed { field, pipeline },
                false => SearchError::NotIndexed {
                    field,
                    pipeline,
                    indexed: indexed.join(", "),
                },
            });
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The filter over pipeline `p`'s archive that a user's words name (`None`/empty: no
/// condition): times back or RFC 3339, an outcome, `FIELD=VALUE` conditions, an event id.
pub fn filter(
    p: &crate::config::pipeline::Pipeline,
    since: Option<&str>,
    until: Option<&str>,
    outcome: Option<&str>,
    list: &[String],
    id: Option<&str>,
) -> Result<super::Filter, SearchError> {
    let kept = p
        .archive
        .kept()
        .ok_or_else(|| SearchError::ArchiveOff(p.name.clone()))?;
    let indexed: Vec<&str> = kept.index.keys().map(String::as_str).collect();
    let now = chrono::Utc::now().timestamp_millis();
    let time = |t: Option<&str>| {
        t.filter(|t| !t.is_empty())
            .map(|t| time_arg(t, now))
            .transpose()
    };
    Ok(super::Filter {
        pipeline: Some(p.name.clone()),
        since_ms: time(since)?,
        until_ms: time(until)?,
        outcome: outcome
            .filter(|o| !o.is_empty())
            .map(|o| super::Outcome::parse(o).ok_or_else(|| SearchError::Outcome(o.to_string())))
            .transpose()?,
        fields: conditions(list, &indexed, &p.name)?,
        event_id: id.filter(|i| !i.is_empty()).map(str::to_string),
    })
}

impl super::Stored {
    /// The W3C `traceparent` the request's span had, when traces were exported as it arrived
    /// (`ops::trace`): kept in the stored request's meta.
    pub fn traceparent(&self) -> Option<String> {
        let meta: serde_json::Value = serde_json::from_str(&self.request.as_ref()?.meta).ok()?;
        meta.get("trace")?.as_str().map(str::to_string)
    }

    /// The id of the request's trace, what a tracing backend (Tempo, Honeycomb, Jaeger) finds it
    /// by.
    pub fn trace_id(&self) -> Option<String> {
        let tp = self.traceparent()?;
        crate::ops::trace::trace_id(&tp).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_spans_back_or_rfc3339() {
        assert_eq!(time_arg("2h", 10_000_000).unwrap(), 10_000_000 - 7_200_000);
        assert_eq!(
            time_arg("2026-01-01T00:00:00Z", 0).unwrap(),
            1_767_225_600_000
        );
        assert!(time_arg("yesterday", 0).is_err());
    }

    #[test]
    fn conditions_name_index_fields() {
        let c = conditions(&["call_id=a=b".into()], &["call_id"], "vapi").unwrap();
        assert_eq!(c["call_id"], "a=b");
        let e = conditions(&["phone=1".into()], &["call_id"], "vapi").unwrap_err();
        assert!(matches!(e, SearchError::NotIndexed { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("not an index field") && e.contains("call_id"),
            "{e}"
        );
        assert!(conditions(&["call_id".into()], &["call_id"], "vapi").is_err());
    }
}
