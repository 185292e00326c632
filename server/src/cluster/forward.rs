//! Events in a cluster: applied here when the group is served here, else forwarded one hop
//! to its owner (`cluster::routing::route`), else `not serving`.

use super::*;

impl Cluster {
    /// Routes a batch of events: those of groups served here are applied; the others are
    /// forwarded (one hop) to their owner, unless this batch was itself forwarded. Fills
    /// `outcomes` for the events listed in `valid` (index into the batch, engine event).
    pub async fn route_events(
        &self,
        producer: Option<engine::Producer>,
        wire: &[msg::WireEvent],
        valid: Vec<(usize, engine::Event)>,
        outcomes: &mut [u8],
        forwarded: bool,
        apply: impl AsyncFnOnce(Vec<engine::Event>) -> Result<Vec<u8>, Refusal>,
    ) -> Result<(), Refusal> {
        let now = mono_ms();
        let vs = self.view.load_full();
        let mut local = Vec::new();
        let mut local_idx = Vec::new();
        let mut remote: BTreeMap<NodeId, (Vec<usize>, Vec<msg::WireEvent>)> = BTreeMap::new();
        {
            let serving = self.serving.load();
            for (i, ev) in valid {
                let g = vs.view.group_of(ev.zone);
                self.note_group(&serving, g);
                match routing::route(self.me, &vs.view, &serving, g, now, forwarded) {
                    Route::Local => {
                        local.push(ev);
                        local_idx.push(i);
                    }
                    Route::Forward(o) => {
                        let r = remote.entry(o).or_default();
                        r.0.push(i);
                        r.1.push(wire[i]);
                    }
                    Route::NotServing => outcomes[i] = outcome::NOT_SERVING,
                }
            }
        }
        let fwd = async {
            let mut res = Vec::new();
            for (owner, (idx, events)) in remote {
                let m = match producer {
                    Some(p) => Message::ProducerBatch(msg::ProducerBatch {
                        producer: p.id,
                        epoch: p.epoch,
                        events,
                    }),
                    None => Message::EventBatch(msg::EventBatch { events }),
                };
                let r = self.request_peer(owner, &m).await;
                res.push((idx, r));
            }
            res
        };
        let (applied, forwarded_res) = tokio::join!(
            async {
                if local.is_empty() {
                    Ok(Vec::new())
                } else {
                    apply(local).await
                }
            },
            fwd
        );
        for (o, i) in applied?.into_iter().zip(local_idx) {
            outcomes[i] = o;
        }
        for (idx, r) in forwarded_res {
            match r {
                Some(Message::EventBatchOk(rep) | Message::ProducerBatchOk(rep))
                    if rep.outcomes.len() == idx.len() =>
                {
                    for (i, o) in idx.into_iter().zip(rep.outcomes) {
                        outcomes[i] = o;
                    }
                }
                _ => {
                    for i in idx {
                        outcomes[i] = outcome::NOT_SERVING;
                    }
                }
            }
        }
        Ok(())
    }
}
