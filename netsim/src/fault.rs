//! Faults as rules: each message in flight gets a verdict from every rule (pass, delay,
//! duplicate or drop), and a rule may cut links for a while. Closures are rules too.

use std::time::Duration;

use crate::rng::Rng;

/// What travels, as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Virtual time of sending, µs from the start of the run.
    pub now: u64,
    /// Sending node.
    pub from: u32,
    /// Receiving node.
    pub to: u32,
    /// Size in bytes.
    pub bytes: u64,
    /// The link classes the message crosses, in order.
    pub classes: &'a [usize],
}

/// A rule's decision about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver as modelled.
    Pass,
    /// Deliver later by this much (the message may overtake or be overtaken).
    Delay(Duration),
    /// Deliver twice.
    Duplicate,
    /// Lose it.
    Drop,
}

/// A fault: a verdict per message, and optionally links cut for a while.
pub trait Rule {
    /// The verdict for one message.
    fn verdict(&mut self, packet: &Packet<'_>, rng: &mut Rng) -> Verdict;

    /// Is the link between `a` and `b` cut at `now` (µs)? `wan` says whether their path
    /// leaves a home LAN.
    fn cuts(&self, _now: u64, _a: u32, _b: u32, _wan: bool) -> bool {
        false
    }

    /// Instants (µs) at which [`Rule::cuts`] may change its answer.
    fn boundaries(&self) -> Vec<u64> {
        Vec::new()
    }
}

impl<F: FnMut(&Packet<'_>, &mut Rng) -> Verdict> Rule for F {
    fn verdict(&mut self, packet: &Packet<'_>, rng: &mut Rng) -> Verdict {
        self(packet, rng)
    }
}

/// The loss, duplication and reordering of link classes.
#[derive(Debug, Clone)]
pub struct LinkFaults {
    /// Per class: (loss, duplicate, reorder, reorder delay).
    pub classes: Vec<(f64, f64, f64, Duration)>,
}

impl Rule for LinkFaults {
    fn verdict(&mut self, packet: &Packet<'_>, rng: &mut Rng) -> Verdict {
        for class in packet.classes {
            let Some(&(loss, duplicate, reorder, delay)) = self.classes.get(*class) else {
                continue;
            };
            if rng.chance(loss) {
                return Verdict::Drop;
            }
            if rng.chance(duplicate) {
                return Verdict::Duplicate;
            }
            if rng.chance(reorder) {
                return Verdict::Delay(delay);
            }
        }
        Verdict::Pass
    }
}

/// Cuts links during time windows: every path leaving a home LAN, or every link of
/// some nodes. Messages sent across a cut are dropped.
#[derive(Debug, Clone)]
pub struct Partitions {
    /// (start µs, end µs, nodes cut or `None` for the internet).
    pub windows: Vec<(u64, u64, Option<Vec<u32>>)>,
}

impl Partitions {
    fn cut_at(&self, now: u64, a: u32, b: u32, wan: bool) -> bool {
        self.windows.iter().any(|(start, end, nodes)| {
            *start <= now
                && now < *end
                && match nodes {
                    None => wan,
                    Some(nodes) => nodes.contains(&a) || nodes.contains(&b),
                }
        })
    }

    /// Is any window open at `now`?
    pub fn active(&self, now: u64) -> bool {
        self.windows.iter().any(|(s, e, _)| *s <= now && now < *e)
    }
}

impl Rule for Partitions {
    fn verdict(&mut self, _packet: &Packet<'_>, _rng: &mut Rng) -> Verdict {
        // Cuts act on links (see `cuts`); a link that is down carries nothing.
        Verdict::Pass
    }

    fn cuts(&self, now: u64, a: u32, b: u32, wan: bool) -> bool {
        self.cut_at(now, a, b, wan)
    }

    fn boundaries(&self) -> Vec<u64> {
        self.windows.iter().flat_map(|(s, e, _)| [*s, *e]).collect()
    }
}
