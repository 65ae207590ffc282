//! Job filters from a query string or a form: the same fields for pages, bulk actions and
//! the API.

use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use super::MAX_PAGE_SIZE;
use crate::JobState;
use crate::inspect::{
    JobFilter, JobOrder, JobQuery, MAX_WORKFLOWS_PAGE, WorkflowPhase, WorkflowQuery,
};

/// The longest `args` filter accepted: 8 KiB of JSON.
pub(crate) const MAX_ARGS_FILTER: usize = 8 * 1024;

/// Whether `filter` matches every job, as far as a bulk action's guard is concerned: no
/// condition, or only an `args` of `{}` (which every object contains), `[]` or `null`.
pub(crate) fn matches_everything(filter: &JobFilter) -> bool {
    let mut rest = filter.clone();
    let empty_args = rest.args.as_ref().is_some_and(|args| match args {
        Value::Null => true,
        Value::Object(fields) => fields.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    });
    if empty_args {
        rest.args = None;
    }
    rest == JobFilter::new()
}

/// Refuses an `args` filter longer than [`MAX_ARGS_FILTER`] as JSON text (the API's bulk
/// actions take it as JSON, not as a query string).
pub(crate) fn check_args_len(filter: &JobFilter) -> Result<(), String> {
    let Some(args) = &filter.args else {
        return Ok(());
    };
    check_len(serde_json::to_string(args).map_or(usize::MAX, |text| text.len()))
}

/// Refuses an `args` filter of `len` bytes if that is more than [`MAX_ARGS_FILTER`].
fn check_len(len: usize) -> Result<(), String> {
    if len > MAX_ARGS_FILTER {
        return Err(format!(
            "the args filter is limited to {MAX_ARGS_FILTER} bytes"
        ));
    }
    Ok(())
}

/// `?state=failed,retryable&queue=emails&kind=…&tag=…&schedule=…&workflow=12&args={"user":7}&order=oldest&after=123&limit=50`.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct JobParams {
    /// States, comma-separated.
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(default)]
    pub(crate) queue: Option<String>,
    #[serde(default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) tag: Option<String>,
    #[serde(default)]
    pub(crate) schedule: Option<String>,
    /// A workflow's id.
    #[serde(default)]
    pub(crate) workflow: Option<String>,
    /// A JSON value the arguments contain (`@>`).
    #[serde(default)]
    pub(crate) args: Option<String>,
    /// `newest` (default) or `oldest`.
    #[serde(default)]
    pub(crate) order: Option<String>,
    /// Continue after this id.
    #[serde(default)]
    pub(crate) after: Option<String>,
    #[serde(default)]
    pub(crate) limit: Option<String>,
}

fn given(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// `value` as an id; else the error `"{what}, not {value:?}"` (`what`: "after is a job id").
fn id(value: &str, what: &str) -> Result<i64, String> {
    value.parse().map_err(|_| format!("{what}, not {value:?}"))
}

/// `value` as a page size from 1 to `max`.
fn limit(value: &str, max: u32) -> Result<u32, String> {
    let limit: u32 = value
        .parse()
        .map_err(|_| format!("limit is a number, not {value:?}"))?;
    if limit == 0 || limit > max {
        return Err(format!("limit is 1 to {max}"));
    }
    Ok(limit)
}

/// The query string of the `fields` given, then `after` (for the next page).
fn query_string<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a Option<String>)>,
    after: Option<i64>,
) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        if let Some(value) = given(value.as_ref()) {
            out.append_pair(name, value);
        }
    }
    if let Some(after) = after {
        out.append_pair("after", &after.to_string());
    }
    out.finish()
}

impl JobParams {
    /// The filter these parameters describe.
    pub(crate) fn filter(&self) -> Result<JobFilter, String> {
        let mut filter = JobFilter::new();
        if let Some(states) = given(self.state.as_ref()) {
            for state in states.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let state = JobState::from_str(state)
                    .map_err(|_| format!("no job state is called {state:?}"))?;
                filter = filter.state(state);
            }
        }
        if let Some(queue) = given(self.queue.as_ref()) {
            filter = filter.queue(queue);
        }
        if let Some(kind) = given(self.kind.as_ref()) {
            filter = filter.kind(kind);
        }
        if let Some(tag) = given(self.tag.as_ref()) {
            filter = filter.tag(tag);
        }
        if let Some(schedule) = given(self.schedule.as_ref()) {
            filter = filter.schedule(schedule);
        }
        if let Some(workflow) = given(self.workflow.as_ref()) {
            filter = filter.workflow(id(workflow, "workflow is a workflow id")?);
        }
        if let Some(args) = given(self.args.as_ref()) {
            check_len(args.len())?;
            let value: Value = serde_json::from_str(args)
                .map_err(|error| format!("the args filter is not JSON: {error}"))?;
            filter = filter.args(value);
        }
        Ok(filter)
    }

    /// The page these parameters ask for (at most [`MAX_PAGE_SIZE`] jobs).
    pub(crate) fn query(&self) -> Result<JobQuery, String> {
        let mut query = JobQuery::new(self.filter()?);
        match given(self.order.as_ref()) {
            None | Some("newest") => {}
            Some("oldest") => query = query.order(JobOrder::OldestFirst),
            Some(other) => return Err(format!("order is newest or oldest, not {other:?}")),
        }
        if let Some(after) = given(self.after.as_ref()) {
            query = query.after(id(after, "after is a job id")?);
        }
        if let Some(value) = given(self.limit.as_ref()) {
            query = query.limit(limit(value, MAX_PAGE_SIZE)?);
        }
        Ok(query)
    }

    /// The query string of these parameters with `after` replaced (for the next page).
    pub(crate) fn with_after(&self, after: Option<i64>) -> String {
        let fields = [
            ("state", &self.state),
            ("queue", &self.queue),
            ("kind", &self.kind),
            ("tag", &self.tag),
            ("schedule", &self.schedule),
            ("workflow", &self.workflow),
            ("args", &self.args),
            ("order", &self.order),
            ("limit", &self.limit),
        ];
        query_string(fields, after)
    }
}

/// `?state=running|finished&after=123&limit=50`: a page of the workflows list.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct WorkflowParams {
    /// `running` or `finished`; any when absent or empty.
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// Continue after this workflow id.
    #[serde(default)]
    pub(crate) after: Option<String>,
    #[serde(default)]
    pub(crate) limit: Option<String>,
}

impl WorkflowParams {
    /// The page these parameters ask for (at most [`MAX_WORKFLOWS_PAGE`] workflows).
    pub(crate) fn query(&self) -> Result<WorkflowQuery, String> {
        let mut query = WorkflowQuery::new();
        match given(self.state.as_ref()) {
            None => {}
            Some("running") => query = query.phase(WorkflowPhase::Running),
            Some("finished") => query = query.phase(WorkflowPhase::Finished),
            Some(other) => return Err(format!("state is running or finished, not {other:?}")),
        }
        if let Some(after) = given(self.after.as_ref()) {
            query = query.after(id(after, "after is a workflow id")?);
        }
        if let Some(value) = given(self.limit.as_ref()) {
            query = query.limit(limit(value, MAX_WORKFLOWS_PAGE)?);
        }
        Ok(query)
    }

    /// The query string of these parameters with `after` replaced (for the next page).
    pub(crate) fn with_after(&self, after: Option<i64>) -> String {
        query_string([("state", &self.state), ("limit", &self.limit)], after)
    }
}

/// `?after=ID`: where a workflow page's list of jobs starts (0, the first, when absent).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct MembersParams {
    #[serde(default)]
    pub(crate) after: Option<String>,
}

impl MembersParams {
    pub(crate) fn after(&self) -> Result<i64, String> {
        match given(self.after.as_ref()) {
            None => Ok(0),
            Some(after) => id(after, "after is a job id"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_make_filters_and_refuse_nonsense() {
        let params = JobParams {
            state: Some("failed, retryable".into()),
            queue: Some("emails".into()),
            args: Some(r#"{"user": 7}"#.into()),
            limit: Some("20".into()),
            ..JobParams::default()
        };
        let query = params.query().expect("query");
        assert_eq!(
            query.filter.states,
            vec![JobState::Failed, JobState::Retryable]
        );
        assert_eq!(query.limit, 20);
        let bad = |params: JobParams| params.query().expect_err("refused");
        bad(JobParams {
            state: Some("done".into()),
            ..JobParams::default()
        });
        bad(JobParams {
            args: Some("{".into()),
            ..JobParams::default()
        });
        bad(JobParams {
            limit: Some("100000".into()),
            ..JobParams::default()
        });
        bad(JobParams {
            order: Some("random()".into()),
            ..JobParams::default()
        });
        bad(JobParams {
            workflow: Some("1 OR true".into()),
            ..JobParams::default()
        });
        // The messages, word for word.
        let refused = [
            (
                JobParams {
                    limit: Some("0".into()),
                    ..JobParams::default()
                },
                format!("limit is 1 to {MAX_PAGE_SIZE}"),
            ),
            (
                JobParams {
                    limit: Some("x".into()),
                    ..JobParams::default()
                },
                r#"limit is a number, not "x""#.to_owned(),
            ),
            (
                JobParams {
                    after: Some("x".into()),
                    ..JobParams::default()
                },
                r#"after is a job id, not "x""#.to_owned(),
            ),
            (
                JobParams {
                    workflow: Some("x".into()),
                    ..JobParams::default()
                },
                r#"workflow is a workflow id, not "x""#.to_owned(),
            ),
            (
                JobParams {
                    args: Some("1".repeat(MAX_ARGS_FILTER + 1)),
                    ..JobParams::default()
                },
                format!("the args filter is limited to {MAX_ARGS_FILTER} bytes"),
            ),
        ];
        for (params, message) in refused {
            assert_eq!(bad(params), message);
        }
        let members = MembersParams {
            after: Some("x".into()),
        };
        assert_eq!(
            members.after().expect_err("refused"),
            r#"after is a job id, not "x""#
        );
        let workflow = JobParams {
            workflow: Some(" 12 ".into()),
            ..JobParams::default()
        };
        assert_eq!(workflow.filter().expect("filter").workflow, Some(12));
        assert!(!matches_everything(&workflow.filter().expect("filter")));
        assert_eq!(workflow.with_after(Some(3)), "workflow=12&after=3");

        let workflows = WorkflowParams {
            state: Some("finished".into()),
            after: Some("40".into()),
            limit: Some("10".into()),
        };
        let query = workflows.query().expect("query");
        assert_eq!(
            (query.phase, query.after, query.limit),
            (Some(WorkflowPhase::Finished), Some(40), 10)
        );
        assert_eq!(
            workflows.with_after(Some(7)),
            "state=finished&limit=10&after=7"
        );
        let refused = WorkflowParams {
            after: Some("x".into()),
            ..WorkflowParams::default()
        }
        .query()
        .expect_err("refused");
        assert_eq!(refused, r#"after is a workflow id, not "x""#);
        let refused = WorkflowParams {
            limit: Some("201".into()),
            ..WorkflowParams::default()
        }
        .query()
        .expect_err("refused");
        assert_eq!(refused, format!("limit is 1 to {MAX_WORKFLOWS_PAGE}"));
        for bad in [
            WorkflowParams {
                state: Some("done".into()),
                ..WorkflowParams::default()
            },
            WorkflowParams {
                limit: Some("201".into()),
                ..WorkflowParams::default()
            },
            WorkflowParams {
                after: Some("x".into()),
                ..WorkflowParams::default()
            },
        ] {
            assert!(bad.query().is_err(), "{bad:?}");
        }
        for empty in ["{}", "[]", "null", " {} "] {
            let filter = JobParams {
                args: Some(empty.into()),
                ..JobParams::default()
            }
            .filter()
            .expect("filter");
            assert!(matches_everything(&filter), "{empty}");
        }
        assert!(!matches_everything(&params.filter().expect("filter")));
        assert!(!matches_everything(
            &JobFilter::new().args(serde_json::json!({"a": {}}))
        ));
        let long = JobFilter::new().args(Value::String("x".repeat(MAX_ARGS_FILTER)));
        assert!(check_args_len(&long).is_err());
        assert_eq!(
            params.with_after(Some(9)),
            "state=failed%2C+retryable&queue=emails&args=%7B%22user%22%3A+7%7D&limit=20&after=9"
        );
    }
}
