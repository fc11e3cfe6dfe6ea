//! The WebSocket session (`/ws`), the only module that knows `actix-web-actors`.
//!
//! Client frames: `send`, `line`, `subscribe`, `unsubscribe`. Server frames: `result`, `error`,
//! `log`, `changed`, `stage` (the kernel's progress: to the sender of the message, and to
//! subscribers of the receiver). A `line` that is not `target.selector(args)` goes to ROBIN,
//! answered as a `result` with `"persona": "ROBIN"`. A bad frame gets an `error` frame and
//! the connection stays open. Each connection has a frame size limit, a rate limit and a
//! heartbeat: the server pings every [`HEARTBEAT_INTERVAL`] and drops a client silent for
//! [`CLIENT_TIMEOUT`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::error::ApiError;
use super::guard::Boundary;
use super::hub::{Changed, Hub};
use crate::actors::kernel::{Progress, StageEvent};
use crate::actors::object::Reply;
use crate::error::TelosError;
use crate::line;
use crate::telos::Telos;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that must authenticate has this long to send its `auth` frame.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket of SPEC §10 (`send`, `subscribe`, `stage` ... frames as JSON text).
#[utoipa::path(
    get,
    path = "/ws",
    tag = "world",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: JSON text frames (`send`, `result`, `error`, `stage`, `subscribe`, `auth` ...; see the README)"),
        (status = 400, description = "Not a WebSocket handshake"),
        (status = 403, description = "Refused at the boundary (another origin, a foreign Host)", body = super::error::ErrorBody)
    )
)]
pub async fn index(
    req: HttpRequest,
    stream: web::Payload,
    telos: web::Data<Telos>,
    boundary: web::Data<Boundary>,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, actix_web::Error> {
    // Open sessions are counted by the `telos_ws_connections` gauge each session holds.
    let open = crate::metrics::metrics()
        .ws_connections
        .load(Ordering::Relaxed)
        .max(0) as usize;
    if open >= telos.settings.max_connections {
        return Err(ApiError::from(TelosError::Unavailable(
            "too many WebSocket connections are open; try again later".into(),
        ))
        .into());
    }
    // With a token, the handshake either carries it in a header or the first frame must.
    let authed = boundary.authorised(&req);
    let session = WsSession::new(
        telos.get_ref().clone(),
        boundary.into_inner(),
        hub.into_inner(),
        authed,
    );
    // The codec refuses larger frames before buffering them (the connection is closed with
    // 1009); frames between the configured limit and twice it get an error frame.
    let codec_limit = telos.settings.max_frame_bytes().saturating_mul(2);
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(codec_limit)
        .start()
}

/// A client frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Send {
        id: Option<Json>,
        target: String,
        selector: String,
        #[serde(default)]
        args: Vec<Json>,
    },
    Line {
        id: Option<Json>,
        text: String,
        /// The object the person is looking at (context for ROBIN).
        #[serde(default)]
        target: Option<String>,
    },
    Subscribe {
        target: String,
    },
    Unsubscribe {
        target: String,
    },
    /// The admin token, when the handshake did not carry it (browsers cannot set headers on a
    /// WebSocket handshake).
    Auth {
        #[serde(default)]
        id: Option<Json>,
        token: String,
    },
}

/// A token bucket: `rate` frames per second, bursts of twice that.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One message in flight on a connection; dropping it frees the slot.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connection ids, so a sender is not sent its own stage events twice.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A frame to write, queued through the session's mailbox so frames keep their order.
#[derive(Message)]
#[rtype(result = "()")]
/// A frame for the client, and when the message it answers arrived (for result frames).
struct Out(Json, Option<std::time::Instant>);

fn with_id(mut frame: Json, id: &Option<Json>) -> Json {
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    frame
}

fn stage_frame(event: &StageEvent) -> Json {
    json!({
        "type": "stage",
        "run": event.run,
        "target": event.receiver,
        "selector": event.selector,
        "stage": event.stage.as_str(),
        "status": event.status,
        "detail": event.detail,
        "at_ms": event.at_ms,
    })
}

fn error_frame(err: &TelosError, id: &Option<Json>) -> Json {
    let mut frame = json!({ "type": "error", "code": err.code(), "message": err.public_message() });
    if let Some(stage) = err.stage() {
        frame["stage"] = json!(stage);
    }
    with_id(frame, id)
}

pub struct WsSession {
    telos: Telos,
    boundary: Arc<Boundary>,
    /// Where this session's subscriptions are registered (changes come from there).
    hub: Arc<Hub>,
    /// False until the client has shown the admin token (always true without one).
    authed: bool,
    connection: u64,
    last_heard: Instant,
    subscriptions: HashSet<String>,
    rate: RateLimit,
    max_frame: usize,
    /// Messages sent on this connection and not answered yet, against `ws_inflight`.
    inflight: Arc<AtomicUsize>,
    /// Counts this connection in `telos_ws_connections`.
    _open: crate::metrics::Held,
}

/// Counts one text frame received (`in`) or sent (`out`).
fn frames(direction: &'static str) {
    crate::metrics::metrics().count(
        "telos_ws_frames_total",
        "WebSocket text frames, by direction.",
        &[("direction", direction)],
        1,
    );
}

impl WsSession {
    fn new(telos: Telos, boundary: Arc<Boundary>, hub: Arc<Hub>, authed: bool) -> Self {
        let rate = RateLimit::new(telos.settings.ws_rate_per_sec);
        let max_frame = telos.settings.max_frame_bytes();
        WsSession {
            authed: authed || !boundary.has_token(),
            boundary,
            telos,
            hub,
            connection: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            last_heard: Instant::now(),
            subscriptions: HashSet::new(),
            rate,
            max_frame,
            inflight: Arc::new(AtomicUsize::new(0)),
            _open: crate::metrics::Held::new(&crate::metrics::metrics().ws_connections),
        }
    }

    fn send_json(ctx: &mut ws::WebsocketContext<Self>, frame: Json) {
        frames("out");
        ctx.text(frame.to_string());
    }

    fn error(ctx: &mut ws::WebsocketContext<Self>, id: Option<&Json>, err: &TelosError) {
        Self::send_json(ctx, error_frame(err, &id.cloned()));
    }

    fn handle_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        frames("in");
        if text.len() > self.max_frame {
            let err = TelosError::BadRequest(format!(
                "frame of {} bytes is over the limit of {} bytes",
                text.len(),
                self.max_frame
            ));
            return Self::error(ctx, None, &err);
        }
        if !self.rate.allow() {
            let err = TelosError::RateLimited(format!(
                "more than {} frames per second on this connection; slow down",
                self.rate.rate
            ));
            return Self::error(ctx, None, &err);
        }
        let raw: Json = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let err = TelosError::BadRequest(format!("malformed JSON frame: {e}"));
                return Self::error(ctx, None, &err);
            }
        };
        let id = raw.get("id").cloned();
        let frame: ClientFrame = match serde_json::from_value(raw) {
            Ok(f) => f,
            Err(e) => {
                let err = TelosError::BadRequest(format!(
                    "bad frame: {e}; expected type send, line, subscribe, unsubscribe or auth"
                ));
                return Self::error(ctx, id.as_ref(), &err);
            }
        };
        if let ClientFrame::Auth { id, token } = &frame {
            if self.boundary.token_matches(token) {
                self.authed = true;
                Self::send_json(ctx, with_id(json!({ "type": "authed" }), id));
            } else {
                let err = TelosError::Forbidden("wrong admin token".into());
                Self::error(ctx, id.as_ref(), &err);
                ctx.close(Some(ws::CloseCode::Policy.into()));
                ctx.stop();
            }
            return;
        }
        if !self.authed {
            let err = TelosError::Forbidden(
                "this server requires the admin token: send {\"type\":\"auth\",\"token\":…} first"
                    .into(),
            );
            Self::error(ctx, id.as_ref(), &err);
            ctx.close(Some(ws::CloseCode::Policy.into()));
            ctx.stop();
            return;
        }
        match frame {
            ClientFrame::Auth { .. } => unreachable!("handled above"),
            ClientFrame::Send {
                id,
                target,
                selector,
                args,
            } => self.dispatch(id, target, selector, args, ctx),
            ClientFrame::Line { id, text, target } => match line::parse(&text) {
                Ok(Some(send)) => self.dispatch(id, send.target, send.selector, send.args, ctx),
                Ok(None) => self.robin(id, text, target, ctx),
                Err(e) => Self::error(ctx, id.as_ref(), &e),
            },
            ClientFrame::Subscribe { target } => {
                if let Err(e) = crate::object::validate_oid(&target) {
                    return Self::error(ctx, None, &e);
                }
                if !self.subscriptions.contains(&target)
                    && self.subscriptions.len() >= self.telos.settings.ws_subscriptions
                {
                    let err = TelosError::RateLimited(format!(
                        "at most {} subscriptions per connection; unsubscribe from some first",
                        self.telos.settings.ws_subscriptions
                    ));
                    return Self::error(ctx, None, &err);
                }
                if self.subscriptions.insert(target.clone()) {
                    self.hub
                        .watch(&target, self.connection, ctx.address().recipient());
                }
                Self::send_json(ctx, json!({ "type": "subscribed", "target": target }));
            }
            ClientFrame::Unsubscribe { target } => {
                if self.subscriptions.remove(&target) {
                    self.hub.unwatch(&target, self.connection);
                }
                Self::send_json(ctx, json!({ "type": "unsubscribed", "target": target }));
            }
        }
    }

    /// Takes one in-flight slot, or answers `rate_limited` when the connection has too many.
    fn reserve(&self, id: Option<&Json>, ctx: &mut ws::WebsocketContext<Self>) -> Option<InFlight> {
        let limit = self.telos.settings.ws_inflight.max(1);
        if self.inflight.fetch_add(1, Ordering::SeqCst) >= limit {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            let err = TelosError::RateLimited(format!(
                "{limit} messages are already waiting for answers on this connection; wait for some"
            ));
            Self::error(ctx, id, &err);
            return None;
        }
        Some(InFlight(self.inflight.clone()))
    }

    fn dispatch(
        &mut self,
        id: Option<Json>,
        target: String,
        selector: String,
        args: Vec<Json>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(slot) = self.reserve(id.as_ref(), ctx) else {
            return;
        };
        let telos = self.telos.clone();
        let me = ctx.address();
        let connection = self.connection;
        let arrived = std::time::Instant::now();
        // Stage events and the reply go through the mailbox in the order they happen.
        actix::spawn(async move {
            let (sink, mut events) = tokio::sync::mpsc::unbounded_channel();
            let progress = Progress {
                origin: connection,
                sink,
            };
            let call = telos.call_with(
                &target,
                crate::sandbox::Op::Send { selector, args },
                Some(progress),
            );
            tokio::pin!(call);
            let reply: Reply = loop {
                tokio::select! {
                    reply = &mut call => break reply,
                    Some(event) = events.recv() => me.do_send(Out(with_id(stage_frame(&event), &id), None)),
                }
            };
            while let Ok(event) = events.try_recv() {
                me.do_send(Out(with_id(stage_frame(&event), &id), None));
            }
            for text in &reply.logs {
                me.do_send(Out(
                    with_id(json!({ "type": "log", "text": text }), &id),
                    None,
                ));
            }
            me.do_send(Out(
                match reply.result {
                    Ok(value) => with_id(json!({ "type": "result", "value": value }), &id),
                    Err(e) => error_frame(&e, &id),
                },
                Some(arrived),
            ));
            drop(slot);
            // The kernel remembers what it learned after the answer: its `learn` stage still
            // reaches the sender, until the run lets go of its progress channel.
            while let Some(event) = events.recv().await {
                if !me.connected() {
                    break;
                }
                me.do_send(Out(with_id(stage_frame(&event), &id), None));
            }
        });
    }

    /// Free text: ROBIN answers, with the object the person looks at as context.
    fn robin(
        &mut self,
        id: Option<Json>,
        text: String,
        target: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(slot) = self.reserve(id.as_ref(), ctx) else {
            return;
        };
        let telos = self.telos.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let about = match &target {
                Some(oid) => telos.view(oid).await.ok(),
                None => None,
            };
            let answer = telos
                .personas
                .send(crate::actors::persona::Generate {
                    persona: "ROBIN".into(),
                    messages: crate::kernel::prompts::robin(&text, about.as_ref()),
                    temperature: None,
                })
                .await
                .map_err(crate::actors::down(crate::actors::Who::Personas))
                .and_then(|r| r);
            drop(slot);
            me.do_send(Out(
                match answer {
                    Ok(g) => with_id(
                        json!({ "type": "result", "persona": "ROBIN", "value": g.text, "model": g.model }),
                        &id,
                    ),
                    Err(e) => error_frame(&e, &id),
                },
                None,
            ));
        });
    }
}

impl Handler<Out> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Out, ctx: &mut Self::Context) {
        Self::send_json(ctx, msg.0);
        if let Some(arrived) = msg.1 {
            crate::metrics::metrics().observe(
                "telos_ws_reply_seconds",
                "From a send frame's arrival at its session to its result frame handed to the connection (the object's work, the commit and the session's own hops).",
                &[],
                arrived.elapsed(),
            );
        }
    }
}

impl StreamHandler<StageEvent> for WsSession {
    fn handle(&mut self, event: StageEvent, ctx: &mut Self::Context) {
        if self.authed
            && event.origin != self.connection
            && self.subscriptions.contains(&event.receiver)
        {
            Self::send_json(ctx, stage_frame(&event));
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for oid in &self.subscriptions {
            self.hub.unwatch(oid, self.connection);
        }
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(AUTH_TIMEOUT, |act, ctx| {
            if !act.authed {
                tracing::debug!("websocket client did not authenticate in time");
                ctx.close(Some(ws::CloseCode::Policy.into()));
                ctx.stop();
            }
        });
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                tracing::debug!("websocket client timed out");
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
        let stages = self.telos.stages.subscribe();
        let stream = futures_util::stream::unfold(stages, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        ctx.add_stream(stream);
    }
}

impl Handler<Changed> for WsSession {
    type Result = ();

    fn handle(&mut self, notice: Changed, ctx: &mut Self::Context) {
        let change = match notice {
            Changed::Change(change) => change,
            Changed::Progress(job) => {
                if self.authed
                    && (job.target.is_empty() || self.subscriptions.contains(&job.target))
                {
                    let mut frame = serde_json::to_value(&*job).unwrap_or_default();
                    // `id` names a client's request in this protocol: the job's is `job`.
                    if let Some(f) = frame.as_object_mut() {
                        let job = f.remove("id").unwrap_or_default();
                        f.insert("job".into(), job);
                        f.insert("type".into(), json!("progress"));
                    }
                    Self::send_json(ctx, frame);
                }
                return;
            }
        };
        if self.authed && self.subscriptions.contains(&change.oid) {
            Self::send_json(
                ctx,
                json!({
                    "type": "changed",
                    "target": change.oid,
                    "version": change.version,
                    "slots": change.slots,
                    "created": change.created,
                    "deleted": change.deleted,
                }),
            );
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.handle_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => Self::error(
                ctx,
                None,
                &TelosError::BadRequest("binary frames are not supported; send JSON text".into()),
            ),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) => Self::error(
                ctx,
                None,
                &TelosError::BadRequest("fragmented frames are not supported".into()),
            ),
            Ok(ws::Message::Nop) => {}
            Err(ws::ProtocolError::Overflow) => {
                tracing::debug!("websocket frame over the codec limit; closing");
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Size,
                    description: Some(format!(
                        "frame larger than {} bytes",
                        self.max_frame.saturating_mul(2)
                    )),
                }));
                ctx.stop();
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket protocol error; closing");
                ctx.stop();
            }
        }
    }
}
