//! One stream of a connection: frames read in chunks, each admitted or shed, answered in
//! order, the replies of a chunk written in one write; framing errors end the stream.

use super::*;

pub(super) fn error_frame(
    metrics: &Metrics,
    id: u64,
    code: ErrorCode,
    message: impl Into<String>,
    out: &mut Vec<u8>,
) {
    metrics.requests.error(code);
    protocol::encode(id, &Refusal::new(code, message).into_message(), out);
}

/// What the stream loop does after answering a request.
pub(super) enum After {
    Continue,
    CloseConnection(ErrorCode),
}

pub(super) async fn serve_stream(
    shared: Arc<Shared>,
    state: Arc<Connection>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let limits = Limits {
        frame_len_max: shared.limits.frame_len_max,
    };
    let mut inbuf: Vec<u8> = Vec::with_capacity(STREAM_BUFFER_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(STREAM_BUFFER_BYTES);
    let mut chunk = vec![0u8; STREAM_READ_BYTES];
    loop {
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                debug!("stream read: {e}");
                return;
            }
        };
        inbuf.extend_from_slice(&chunk[..n]);
        // Every request of a chunk is answered by the one write at its end: each one's
        // latency is from here to that write. Requests are tallied by op and tier and
        // recorded together, two clock reads per chunk, not per request.
        let read_at = Instant::now();
        let mut tally = [[0u32; TierLabel::ALL.len()]; Op::ALL.len()];
        let mut pos = 0;
        let mut admitted = 0u32;
        let mut after = After::Continue;
        // One clock read per chunk of frames, not per request.
        let now = now_ms(&shared);
        while inbuf.len() - pos >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] =
                inbuf[pos..pos + HEADER_LEN].try_into().expect("16 bytes");
            let header = match Header::parse(head, limits) {
                Ok(h) => h,
                Err(e) => {
                    let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
                    error_frame(&shared.metrics, id, e.code(), e.to_string(), &mut out);
                    end_stream(e.code(), &out, &mut send, &mut recv).await;
                    shared.admission.release(&state.load, admitted);
                    return;
                }
            };
            let end = pos + HEADER_LEN + header.body_len as usize;
            if inbuf.len() < end {
                break;
            }
            let body = &inbuf[pos + HEADER_LEN..end];
            pos = end;
            if !admit(&shared, &state, header.request_id, &mut out) {
                continue;
            }
            admitted += 1;
            after = answer(&shared, &state, &header, body, now, &mut out).await;
            if let Some(op) = op_of(header.kind) {
                // The tier as authenticated (a request before HELLO counts as shared).
                let tier = state.tier().unwrap_or(Tier::Shared);
                tally[op as usize][tier_label(tier) as usize] += 1;
            }
            if matches!(after, After::CloseConnection(_)) {
                break;
            }
        }
        inbuf.drain(..pos);
        let written = if out.is_empty() {
            Ok(())
        } else {
            send.write_all(&out).await
        };
        out.clear();
        shared.admission.release(&state.load, admitted);
        record_latencies(&shared.metrics, &tally, read_at);
        if written.is_err() {
            return;
        }
        if let After::CloseConnection(code) = after {
            let _ = send.finish();
            // Give the reply a moment to leave before the connection closes.
            tokio::time::sleep(Duration::from_millis(CLOSE_LINGER_MS)).await;
            conn.close(
                VarInt::from_u32(u32::from(code.code())),
                code.name().as_bytes(),
            );
            return;
        }
    }
    let _ = send.finish();
}

pub(super) fn now_ms(shared: &Shared) -> u64 {
    shared.engine.clock().now_ms()
}

/// Admits a request, or answers it `shutting_down` (the node is stopping) or `overloaded`
/// (an in-flight bound is reached; the shared tier is shed first) and says so.
fn admit(shared: &Shared, state: &Connection, request_id: u64, out: &mut Vec<u8>) -> bool {
    let tier = state.tier().unwrap_or(Tier::Shared);
    if shared.stopping.load(Ordering::Acquire) {
        error_frame(
            &shared.metrics,
            request_id,
            ErrorCode::ShuttingDown,
            "node is shutting down",
            out,
        );
        return false;
    }
    if !shared.admission.try_admit(&state.load, tier) {
        shared.metrics.requests.shed[tier_label(tier) as usize].inc();
        error_frame(
            &shared.metrics,
            request_id,
            ErrorCode::Overloaded,
            "too many requests in flight; retry with backoff",
            out,
        );
        return false;
    }
    true
}

/// Framing is lost: send what was answered (ending with the `ERROR` frame), stop reading
/// (`STOP_SENDING` with the code) and finish our side once the answer is delivered, waiting
/// at most `ERROR_DELIVERY_WAIT_MS`.
async fn end_stream(
    code: ErrorCode,
    out: &[u8],
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    let _ = recv.stop(VarInt::from_u32(u32::from(code.code())));
    if send.write_all(out).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(
            Duration::from_millis(ERROR_DELIVERY_WAIT_MS),
            send.stopped(),
        )
        .await;
    }
}

/// Records a chunk's requests, tallied by op and tier, with the latency from the read to the
/// write that answered them all.
fn record_latencies(
    metrics: &Metrics,
    tally: &[[u32; TierLabel::ALL.len()]; Op::ALL.len()],
    read_at: Instant,
) {
    if !tally.iter().flatten().any(|&n| n > 0) {
        return;
    }
    let took = read_at.elapsed();
    for op in Op::ALL {
        for t in TierLabel::ALL {
            let n = tally[op as usize][t as usize];
            metrics
                .requests
                .latency(op, t)
                .observe_n(took, u64::from(n));
        }
    }
}
