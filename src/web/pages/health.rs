//! The doctor's checks.

use axum::response::IntoResponse;
use maud::html;

use super::{Ctx, Nav, PageResult, json, layout};
use crate::inspect::{self, HealthOptions};
use crate::web::State;

pub(crate) async fn page(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let report = inspect::health(&shared.pool, &HealthOptions::default()).await?;
    shared.store_health(report.clone()).await;
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
