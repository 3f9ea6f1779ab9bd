//! The mock upstream: deterministic capacity per aligned window, for demos, tests and benchmarks.

use super::*;

/// A deterministic upstream: `capacity` units per window aligned to multiples of `window` since the Unix
/// epoch. Its answers report `window_remaining`: what is left in the latest window it has seen.
#[derive(Debug)]
pub struct MockUpstream {
    id: u64,
    node_name: String,
    capacity: u64,
    window_ms: u64,
    latency: Duration,
    /// Stream the answer as this many server-sent events (0: one JSON body).
    stream_chunks: u32,
    /// Between two events.
    chunk_interval: Duration,
    /// (window index, units used in it).
    used: Mutex<(u64, u64)>,
    calls: AtomicU64,
}

impl MockUpstream {
    /// A mock serving as `node_name` with `capacity` units per `window` (at least 1 ms) and `latency` per
    /// call. Capacity 0 never has headroom.
    pub fn new(node_name: String, capacity: u64, window: Duration, latency: Duration) -> Self {
        MockUpstream {
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            node_name,
            capacity,
            window_ms: duration_ms(window).max(1),
            latency,
            stream_chunks: 0,
            chunk_interval: Duration::ZERO,
            used: Mutex::new((0, 0)),
            calls: AtomicU64::new(0),
        }
    }

    /// Answers as a stream of `chunks` server-sent events `interval` apart (after the latency), the way an LLM
    /// API streams a completion: `data: {"index":i,...}` events, then `data: [DONE]`. 0 chunks: one JSON body.
    pub fn streaming(mut self, chunks: u32, interval: Duration) -> Self {
        self.stream_chunks = chunks;
        self.chunk_interval = interval;
        self
    }

    /// How many calls this mock has answered.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The state rolled forward to the window containing `now_ms` (time going backwards does not roll back).
    fn state(&self, now_ms: u64) -> MutexGuard<'_, (u64, u64)> {
        let mut g = lock(&self.used);
        let w = now_ms / self.window_ms;
        if w > g.0 {
            *g = (w, 0);
        }
        g
    }
}

impl Upstream for MockUpstream {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn headroom(&self, now_ms: u64) -> Headroom {
        let g = self.state(now_ms);
        Headroom {
            remaining: self.capacity.saturating_sub(g.1),
            capacity: self.capacity,
            resets_at_ms: g.0.saturating_add(1).saturating_mul(self.window_ms),
        }
    }

    fn try_acquire(&self, now_ms: u64, reserve: u64) -> Option<Permit> {
        let mut g = self.state(now_ms);
        (self.capacity.saturating_sub(g.1) > reserve).then(|| {
            g.1 += 1;
            Permit {
                owner: self.id,
                window: g.0,
                _flight: None,
            }
        })
    }

    fn release(&self, permit: Permit) {
        if permit.owner != self.id {
            warn!("permit released to a mock upstream that did not issue it; ignored");
            return;
        }
        let mut g = lock(&self.used);
        if g.0 == permit.window {
            g.1 = g.1.saturating_sub(1);
        }
    }

    fn call(
        &self,
        permit: Permit,
        req: UpstreamRequest,
    ) -> BoxFuture<'_, Result<UpstreamResponse, UpstreamError>> {
        Box::pin(async move {
            if permit.owner != self.id {
                return Err(UpstreamError::ForeignPermit);
            }
            tokio::time::sleep(self.latency).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let window_remaining = {
                let g = lock(&self.used);
                self.capacity.saturating_sub(g.1)
            };
            let body = serde_json::json!({
                "served_by": self.node_name,
                "method": req.method,
                "path": req.path_and_query,
                "request_body_bytes": req.body.len(),
                "window_remaining": window_remaining,
            });
            if self.stream_chunks == 0 {
                let json = vec![("content-type".into(), b"application/json".to_vec())];
                return Ok(UpstreamResponse::whole(200, json, body.to_string().into_bytes()));
            }
            let (chunks, interval) = (self.stream_chunks, self.chunk_interval);
            let events = futures::stream::unfold(0u32, move |i| {
                let body = body.clone();
                async move {
                    if i > chunks {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    let event = if i == chunks {
                        "data: [DONE]\n\n".to_string()
                    } else {
                        let mut e = body;
                        e["index"] = i.into();
                        format!("data: {e}\n\n")
                    };
                    Some((Ok(event.into_bytes()), i + 1))
                }
            });
            Ok(UpstreamResponse {
                status: 200,
                headers: vec![
                    ("content-type".into(), b"text/event-stream".to_vec()),
                    ("cache-control".into(), b"no-cache".to_vec()),
                ],
                body: Box::pin(events),
            })
        })
    }
}
