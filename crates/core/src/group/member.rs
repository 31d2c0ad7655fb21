//! A group's members: their end of the dispatcher (deliveries in, acknowledgements and
//! leaves out), and the link that feeds a member whose dispatcher is elsewhere.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DEFAULT_MEMBER_QUEUE;
use crate::error::HubResult;
use crate::subscription::Item;

pub(crate) enum Ctl {
    Join {
        id: u64,
        tx: mpsc::Sender<HubResult<Item>>,
        prefetch: usize,
    },
    Leave {
        id: u64,
    },
    Ack {
        seq: u64,
    },
    /// Reads with other topic filters from where the group's source has read to: the
    /// members, what they hold and the position stay (see [`super::Refilter`]).
    Refilter {
        /// The request's topic filters (a pump keeps them for its next join).
        topics: Vec<crate::topic::TopicFilter>,
        /// The group's filters' canonical text.
        filters: String,
        /// The log's last sequence when the change was made: events up to it keep the
        /// old filters.
        at: u64,
        make: super::MakeSource,
        done: tokio::sync::oneshot::Sender<HubResult<()>>,
    },
}

/// Acknowledgements from a dispatcher's members, collected without waking it: an ack
/// wakes the dispatcher only while it waits for credit. A wake per acknowledgement cost
/// an auto-ack AMQP consumer a cross-thread wake-up per message.
#[derive(Default)]
pub(crate) struct Acks {
    seqs: Mutex<Vec<u64>>,
    /// The dispatcher waits for a member's room: an ack must wake it.
    pub(super) wanted: std::sync::atomic::AtomicBool,
    pub(super) wake: tokio::sync::Notify,
}

impl Acks {
    pub(super) fn push(&self, seq: u64) {
        self.seqs.lock().push(seq);
        // After the push: a dispatcher that set `wanted` and then found the buffer
        // empty is woken by this.
        if self.wanted.load(std::sync::atomic::Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    pub(super) fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.seqs.lock())
    }
}

/// One member's end of a group.
pub(crate) struct Member {
    pub(super) id: u64,
    pub(super) rx: mpsc::Receiver<HubResult<Item>>,
    pub(crate) ctl: mpsc::UnboundedSender<Ctl>,
    /// Where acks go for a dispatcher here; `None` for a linked member, whose acks
    /// travel on `ctl` to its link.
    pub(super) acks: Option<Arc<Acks>>,
    pub(super) shutdown: CancellationToken,
    /// What this member may not see: such events are acknowledged unseen, so the group
    /// moves past them (members of one group should share an identity).
    pub(crate) guard: Option<Arc<crate::rules_hub::Guard>>,
    /// Changes the group's filters in place (a group positioned by name, dispatched here).
    pub(crate) refilter: Option<Box<super::Refilter>>,
}

impl Member {
    /// `Some(seq)` when the item is an event this member may not see (`seq` to ack,
    /// `None` for an ephemeral one).
    fn hidden(&self, it: &Option<HubResult<Item>>) -> Option<Option<u64>> {
        match (it, &self.guard) {
            (Some(Ok(Item::Event(d))), Some(g)) if !g.admits(&d.event) => Some(d.event.seq),
            _ => None,
        }
    }

    pub(crate) async fn next(&mut self) -> Option<HubResult<Item>> {
        loop {
            let it = tokio::select! {
                it = self.rx.recv() => it,
                _ = self.shutdown.cancelled() => None,
            };
            match self.hidden(&it) {
                Some(Some(seq)) => self.ack(seq),
                Some(None) => {}
                None => return it,
            }
        }
    }

    pub(crate) fn try_next(&mut self) -> Option<HubResult<Item>> {
        loop {
            let it = self.rx.try_recv().ok();
            match self.hidden(&it) {
                Some(Some(seq)) => self.ack(seq),
                Some(None) => {}
                None => return it,
            }
        }
    }

    /// Whether its dispatcher runs on this node (else its link carries everything).
    pub(crate) fn dispatched_here(&self) -> bool {
        self.acks.is_some()
    }

    pub(crate) fn ack(&self, seq: u64) {
        match &self.acks {
            Some(a) => a.push(seq),
            None => drop(self.ctl.send(Ctl::Ack { seq })),
        }
    }

    pub(crate) fn ack_handle(&self) -> AckHandle {
        match &self.acks {
            Some(a) => AckHandle::Here(a.clone()),
            None => AckHandle::Linked(self.ctl.clone()),
        }
    }
}

/// A member's ack path, detached from its receiver.
#[derive(Clone)]
pub(crate) enum AckHandle {
    Here(Arc<Acks>),
    Linked(mpsc::UnboundedSender<Ctl>),
}

impl AckHandle {
    pub(crate) fn ack(&self, seq: u64) {
        match self {
            AckHandle::Here(a) => a.push(seq),
            AckHandle::Linked(ctl) => drop(ctl.send(Ctl::Ack { seq })),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.ctl.send(Ctl::Leave { id: self.id });
    }
}

/// What a linked member asks of the dispatcher it is linked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCtl {
    /// The member settled this sequence.
    Ack(u64),
    /// The member is gone.
    Leave,
}

/// The far end of a member whose dispatcher is not its own (one on another node, or a
/// local one it may have to leave for another): whoever holds this feeds the member
/// and carries its acknowledgements.
pub struct MemberLink {
    tx: mpsc::Sender<HubResult<Item>>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
}

impl MemberLink {
    /// Hands the member an item, waiting for room; `false` once the member is gone.
    pub async fn send(&self, item: HubResult<Item>) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// The next thing the member asks for; `None` once it is gone.
    pub async fn recv(&mut self) -> Option<LinkCtl> {
        loop {
            match self.ctl.recv().await? {
                Ctl::Ack { seq } => return Some(LinkCtl::Ack(seq)),
                Ctl::Leave { .. } => return Some(LinkCtl::Leave),
                Ctl::Refilter { done, .. } => drop(done.send(Ok(()))),
                Ctl::Join { .. } => {}
            }
        }
    }

    /// Like [`MemberLink::recv`] without waiting.
    pub fn try_recv(&mut self) -> Option<LinkCtl> {
        loop {
            match self.ctl.try_recv().ok()? {
                Ctl::Ack { seq } => return Some(LinkCtl::Ack(seq)),
                Ctl::Leave { .. } => return Some(LinkCtl::Leave),
                Ctl::Refilter { done, .. } => drop(done.send(Ok(()))),
                Ctl::Join { .. } => {}
            }
        }
    }

    /// What the member asks for, as it asked (the pump in `group_join` keeps a
    /// refilter's topics for its next join).
    pub(crate) async fn recv_ctl(&mut self) -> Option<Ctl> {
        self.ctl.recv().await
    }

    /// The member's queue, to wait for room without blocking anything else.
    pub fn sender(&self) -> &mpsc::Sender<HubResult<Item>> {
        &self.tx
    }

    /// Whether the member is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A member fed through a [`MemberLink`].
pub struct LinkedMember(pub(crate) Member);

/// A member holding `queue` items, and its link.
pub fn linked(queue: usize, shutdown: CancellationToken) -> (LinkedMember, MemberLink) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let member = Member {
        id: 0,
        rx,
        ctl: ctl_tx,
        acks: None,
        shutdown,
        guard: None,
        refilter: None,
    };
    (LinkedMember(member), MemberLink { tx, ctl: ctl_rx })
}

/// Queue depth of a member with this prefetch.
pub(crate) fn member_queue(prefetch: Option<usize>) -> usize {
    prefetch.unwrap_or(DEFAULT_MEMBER_QUEUE)
}
