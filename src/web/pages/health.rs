//! The doctor's checks.

use axum::response::IntoResponse;
use maud::html;
use serde_json::Value;

use super::{Ctx, Nav, PageResult, json, layout};
use crate::inspect::{self, HealthOptions, HealthReport};
use crate::web::{Access, State};

/// What replaces another session's query or client address for a viewer without full access.
const HIDDEN: &str = "[hidden: full access only]";

/// `report` as `access` may see it: other sessions' query text and client addresses (the
/// `query` and `client` of a check's details, and the address in its summary and remedy) only
/// with [`Access::Full`]. They are other applications' data, not the jobs'.
pub(crate) fn scrub(access: Access, report: &mut HealthReport) {
    if access == Access::Full {
        return;
    }
    for check in &mut report.checks {
        let Value::Object(details) = &mut check.details else {
            continue;
        };
        let client = details
            .get("client")
            .and_then(Value::as_str)
            .filter(|client| !client.is_empty())
            .map(str::to_owned);
        for key in ["query", "client"] {
            if let Some(value) = details.get_mut(key).filter(|value| !value.is_null()) {
                *value = Value::String(HIDDEN.to_owned());
            }
        }
        if let Some(client) = client {
            check.summary = check.summary.replace(&client, HIDDEN);
            if let Some(remedy) = check.remedy.as_mut() {
                *remedy = remedy.replace(&client, HIDDEN);
            }
        }
    }
}

pub(crate) async fn page(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let mut report = inspect::health(&shared.pool, &HealthOptions::default()).await?;
    shared.store_health(report.clone()).await;
    scrub(ctx.access, &mut report);
    let body = html! {
        div.page-head { h1 { "Health" } span class={"badge sev-" (report.worst().as_str())} { (report.worst().as_str()) } }
        div.checks {
            @for check in &report.checks {
                section class={"card check sev-" (check.severity.as_str())} data-check=(check.name) {
                    div.card-head {
                        h2 { (super::check_title(check.name)) " " code.muted { (check.name) } }
                        span class={"badge sev-" (check.severity.as_str())} { (check.severity.as_str()) }
                    }
                    p { (check.summary) }
                    @if let Some(remedy) = &check.remedy { p.remedy { strong { "Remedy: " } (remedy) } }
                    @if !check.details.is_null() && check.details != serde_json::json!({}) && check.details != serde_json::json!([]) {
                        details { summary { "Details" } (json(&check.details)) }
                    }
                }
            }
        }
    };
    Ok(layout(&ctx, Nav::Health, "Health", None, body).into_response())
}
