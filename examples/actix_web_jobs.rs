//! A small actix-web service that runs stook jobs inside its own System:
//!
//! ```text
//!  POST   /jobs        a job config (TOML) → 201 {"id": N}, or 400 {"errors": [{"key", "message"}]}
//!  GET    /jobs/{id}   → {"id", "state": running|done|failed|cancelled, "progress", "report"|"error"}
//!  DELETE /jobs/{id}   → 202: cancels as Ctrl-C does (the output stays resumable)
//! ```
//!
//! ```sh
//! cargo run --example actix_web_jobs -- 127.0.0.1:8080
//! curl -X POST --data-binary @config/demo.toml http://127.0.0.1:8080/jobs
//! ```
//!
//! Relative paths in a posted config are taken from the service's working
//! directory. tests/web.rs drives it with real HTTP requests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use stook::{BackendRegistry, Job, JobConfig, Progress, RunControl, RunError, RunReport};

/// What the service knows of one job.
struct Entry {
    control: RunControl,
    outcome: Option<Result<RunReport, RunError>>,
}

#[derive(Default)]
struct Jobs {
    next: u64,
    all: BTreeMap<u64, Entry>,
}

type State = web::Data<Mutex<Jobs>>;

async fn create(state: State, registry: web::Data<BackendRegistry>, body: String) -> HttpResponse {
    let here = Path::new(".");
    let config = match JobConfig::from_toml(&body, here) {
        Ok(c) => c,
        Err(problems) => {
            let errors: Vec<_> = problems
                .iter()
                .map(|p| json!({"key": p.key, "message": p.message}))
                .collect();
            return HttpResponse::BadRequest().json(json!({ "errors": errors }));
        }
    };
    let job = match Job::new(config, &registry, Path::new("request body")) {
        Ok(j) => j,
        Err(RunError::Config(e)) => {
            let errors: Vec<_> = e
                .problems
                .iter()
                .map(|p| json!({"key": p.key, "message": p.message}))
                .collect();
            return HttpResponse::BadRequest().json(json!({ "errors": errors }));
        }
        Err(e) => return HttpResponse::BadRequest().json(json!({"errors": [e.to_string()]})),
    };
    let control = RunControl::default();
    let handle = job.start(control.clone());
    let id = {
        let mut jobs = state.lock().unwrap_or_else(|p| p.into_inner());
        jobs.next += 1;
        let id = jobs.next;
        jobs.all.insert(
            id,
            Entry {
                control,
                outcome: None,
            },
        );
        id
    };
    let state = state.clone();
    actix_web::rt::spawn(async move {
        let outcome = handle.wait().await;
        let mut jobs = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = jobs.all.get_mut(&id) {
            e.outcome = Some(outcome);
        }
    });
    HttpResponse::Created().json(json!({ "id": id }))
}

fn progress_json(p: &Progress) -> serde_json::Value {
    serde_json::to_value(p.snapshot()).unwrap_or_default()
}

async fn show(state: State, id: web::Path<u64>) -> HttpResponse {
    let jobs = state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(e) = jobs.all.get(&id) else {
        return HttpResponse::NotFound().json(json!({"error": format!("no job {id}")}));
    };
    let mut body = json!({"id": *id, "progress": progress_json(&e.control.progress)});
    match &e.outcome {
        None => body["state"] = "running".into(),
        Some(Ok(report)) => {
            body["state"] = "done".into();
            body["report"] = serde_json::to_value(report).unwrap_or_default();
        }
        Some(Err(err)) => {
            body["state"] = if err.is_cancelled() {
                "cancelled"
            } else {
                "failed"
            }
            .into();
            body["error"] = err.to_string().into();
        }
    }
    HttpResponse::Ok().json(body)
}

async fn cancel(state: State, id: web::Path<u64>) -> HttpResponse {
    let jobs = state.lock().unwrap_or_else(|p| p.into_inner());
    match jobs.all.get(&id) {
        Some(e) => {
            e.control
                .cancel
                .store(true, std::sync::atomic::Ordering::SeqCst);
            HttpResponse::Accepted().json(json!({"id": *id, "cancelling": true}))
        }
        None => HttpResponse::NotFound().json(json!({"error": format!("no job {id}")})),
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let state: State = web::Data::new(Mutex::new(Jobs::default()));
    let registry = web::Data::from(Arc::new(BackendRegistry::with_builtins()));
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(registry.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/jobs", web::post().to(create))
                .route("/jobs/{id}", web::get().to(show))
                .route("/jobs/{id}", web::delete().to(cancel))
        })
        .workers(2)
        .bind(&addr)?;
        for a in server.addrs() {
            println!("listening on http://{a}");
        }
        server.run().await
    })
}
