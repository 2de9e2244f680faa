//! The HTTP server around the simulator (axum, HTTP/1.1).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use tokio::net::TcpListener;

use super::SimError;
use super::config::SimConfig;
use super::response::SimResponse;
use super::simulator::{SimRequest, Simulator};

/// Bodies larger than this are refused (413) before the simulator sees them; a deploy
/// key request is a few kilobytes at most.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Serves the simulator on `listener` until the process ends.
pub async fn serve(config: SimConfig, listener: TcpListener) -> Result<(), SimError> {
    serve_with_shutdown(config, listener, std::future::pending()).await
}

/// Serves the simulator until `shutdown` completes, then finishes in-flight requests.
pub async fn serve_with_shutdown(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let local = listener.local_addr()?;
    let simulator = Simulator::new(config)?.with_fallback_base(format!("http://{local}"));
    let app = router(Arc::new(simulator));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Every request goes to one handler: routing is the simulator's job (see `routes`).
pub fn router(simulator: Arc<Simulator>) -> Router {
    Router::new().fallback(dispatch).with_state(simulator)
}

async fn dispatch(State(simulator): State<Arc<Simulator>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return into_response(SimResponse::bitbucket_error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"));
        }
    };
    let request = SimRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    into_response(simulator.handle(request).await)
}

fn into_response(sim: SimResponse) -> Response {
    let mut response = Response::new(Body::from(sim.body));
    *response.status_mut() = sim.status;
    for (name, value) in sim.headers {
        response.headers_mut().append(name, value);
    }
    response
}
