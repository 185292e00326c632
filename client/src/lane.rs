//! A lane: one long-lived bidirectional stream carrying pipelined requests. Requests are
//! written as they arrive; replies come back in order and complete the oldest pending
//! request.

use std::collections::VecDeque;

use protocol::frame::{Header, Limits, HEADER_LEN};
use protocol::Message;
use tokio::sync::{mpsc, oneshot};

use crate::ClientError;

/// A request travelling through a lane.
#[derive(Debug)]
pub struct Request {
    /// The request id written into the frame.
    pub id: u64,
    /// The message.
    pub message: Message,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Result<Message, ClientError>>,
}

/// Starts a lane's task; the sender feeds it requests.
pub(crate) fn spawn(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    queue_len: usize,
) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(queue_len);
    tokio::spawn(run(send, recv, rx));
    tx
}

async fn run(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut pending: VecDeque<(u64, oneshot::Sender<Result<Message, ClientError>>)> =
        VecDeque::new();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut inbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // Replies are at most what the node accepts of requests; be generous.
    let limits = Limits {
        frame_len_max: 64 << 20,
    };
    let fail = |pending: &mut VecDeque<(u64, oneshot::Sender<Result<Message, ClientError>>)>,
                why: String| {
        for (_, w) in pending.drain(..) {
            let _ = w.send(Err(ClientError::Connection(why.clone())));
        }
    };
    let mut open = true;
    loop {
        tokio::select! {
            req = rx.recv(), if open => {
                let Some(first) = req else {
                    open = false;
                    let _ = send.finish();
                    if pending.is_empty() { return; }
                    continue;
                };
                // Write every request already queued in one go.
                let mut batch = vec![first];
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                }
                for r in batch {
                    protocol::encode(r.id, &r.message, &mut out);
                    pending.push_back((r.id, r.reply));
                }
                if let Err(e) = send.write_all(&out).await {
                    fail(&mut pending, e.to_string());
                    return;
                }
                out.clear();
            }
            read = recv.read(&mut chunk), if !pending.is_empty() || !open => {
                let n = match read {
                    Ok(Some(n)) => n,
                    Ok(None) => { fail(&mut pending, "stream closed by the node".into()); return; }
                    Err(e) => { fail(&mut pending, e.to_string()); return; }
                };
                inbuf.extend_from_slice(&chunk[..n]);
                let mut pos = 0;
                while inbuf.len() - pos >= HEADER_LEN {
                    let head: &[u8; HEADER_LEN] = inbuf[pos..pos + HEADER_LEN].try_into().expect("16 bytes");
                    let header = match Header::parse(head, limits) {
                        Ok(h) => h,
                        Err(e) => { fail(&mut pending, e.to_string()); return; }
                    };
                    let end = pos + HEADER_LEN + header.body_len as usize;
                    if inbuf.len() < end { break; }
                    let decoded = protocol::decode(&header, &inbuf[pos + HEADER_LEN..end]);
                    pos = end;
                    let Some((id, waiter)) = pending.pop_front() else {
                        return; // a reply nobody asked for: the node is confused; drop the lane
                    };
                    let result = match decoded {
                        Ok(m) if header.request_id == id => Ok(m),
                        Ok(_) => Err(ClientError::Connection(format!("reply for request {} arrived for request {id}", header.request_id))),
                        Err(e) => Err(ClientError::Protocol(e)),
                    };
                    let _ = waiter.send(result);
                }
                inbuf.drain(..pos);
                if !open && pending.is_empty() { return; }
            }
        }
    }
}
