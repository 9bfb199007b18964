//! Run limits that hold for the whole mesh.
//!
//! A capability limited to a number of runs names the device that counts them (its
//! `counter` caveat, set by `hearth app approve` and `hearth cap delegate
//! --counted-by`). Before a run starts anywhere, the device about to run it has the
//! run counted there: itself when it is the counter, otherwise by asking the counter
//! over `/hearth/compute/1` (a reservation: the chain and the job's id). The counter
//! checks the chain, counts the run on disk under every link (as for its own runs)
//! and answers with its number, or refuses once the runs are used up. A device that
//! cannot reach the counter does not run the job: with the mesh partitioned, a
//! capability for N runs gives N results at most, not N per side.

use hearth_protocol::capability::{Chain, Resource, RevocationSet};
use hearth_protocol::compute::JobReply;

use super::{Compute, audit};
use crate::node::Node;

const RESERVATION: &[u8; 8] = b"HRUN-RSV";
const COUNTED: &[u8; 8] = b"HRUN-CNT";
/// The longest job id text a reservation carries.
const MAX_JOB_ID: usize = 128;

/// Who counts the runs of `chain`: `None` when no link limits them; an error when a
/// link limits them without naming a device to count them, or links name different
/// ones.
pub(crate) fn counter_of(chain: &Chain) -> Result<Option<String>, String> {
    let mut counter: Option<String> = None;
    for link in chain.links() {
        for grant in &link.capability().grants {
            if grant.resource != Resource::Compute || grant.caveats.max_runs.is_none() {
                continue;
            }
            let Some(named) = &grant.caveats.counter else {
                return Err(format!(
                    "capability {} limits its runs but names no device to count them for \
                     the whole mesh; have it approved or delegated again (--counted-by)",
                    link.id().short()
                ));
            };
            match &counter {
                Some(c) if c != named => {
                    return Err(format!(
                        "the capability's links count runs on different devices ({c} and \
                         {named})"
                    ));
                }
                _ => counter = Some(named.clone()),
            }
        }
    }
    Ok(counter)
}

/// Is `bytes` a reservation rather than a job?
pub(crate) fn is_reservation(bytes: &[u8]) -> bool {
    bytes.starts_with(RESERVATION)
}

pub(crate) fn encode_reservation(job: &str, chain: &Chain) -> Vec<u8> {
    let mut out = RESERVATION.to_vec();
    let job = super::cut(job, MAX_JOB_ID);
    out.push(u8::try_from(job.len()).unwrap_or(0));
    out.extend_from_slice(job.as_bytes());
    out.extend_from_slice(&chain.encode());
    out
}

fn decode_reservation(bytes: &[u8]) -> Option<(String, Chain)> {
    let rest = bytes.strip_prefix(RESERVATION.as_slice())?;
    let (&len, rest) = rest.split_first()?;
    let (job, chain) = rest.split_at_checked(usize::from(len))?;
    let job = std::str::from_utf8(job).ok()?.to_owned();
    Some((job, Chain::decode(chain).ok()?))
}

/// Has the run of job `job` under `chain` counted by `counter` (another device) and
/// returns its number; the reply to give when it was not counted.
pub(crate) async fn reserve(
    node: &Node,
    counter: &str,
    job: &str,
    chain: &Chain,
) -> Result<u64, JobReply> {
    let unreachable = |why: String| {
        JobReply::Unavailable(format!(
            "the device that counts this capability's runs, {counter}, cannot be reached \
             ({why}); a capability limited to a number of runs runs only while it can"
        ))
    };
    let Some(mesh) = node.mesh.get() else {
        return Err(unreachable("the mesh is not running".into()));
    };
    let reply = mesh
        .forward_job(counter, encode_reservation(job, chain))
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    if let Some(number) = reply.strip_prefix(COUNTED.as_slice()) {
        let number: [u8; 8] = number
            .try_into()
            .map_err(|_| unreachable("it sent a malformed answer".into()))?;
        return Ok(u64::from_be_bytes(number));
    }
    Err(match JobReply::decode(&reply) {
        Ok(JobReply::Refused(reason)) => JobReply::Refused(format!(
            "{counter}, which counts this capability's runs, refused the run: {reason}"
        )),
        Ok(JobReply::Unavailable(reason)) => unreachable(reason),
        _ => unreachable("it sent a malformed answer".into()),
    })
}

/// On the counter: counts a run that device `from` is about to start, and answers
/// with its number (or a refusal). Audited either way.
pub(crate) async fn count_for(node: &Node, compute: &Compute, from: &str, bytes: &[u8]) -> Vec<u8> {
    let Some((job, chain)) = decode_reservation(bytes) else {
        return JobReply::Refused("the reservation is malformed".into()).encode();
    };
    let cap = chain.leaf().id().to_string();
    let holder = chain.leaf().capability().audience.to_string();
    let refuse = |reason: String| {
        audit(
            node,
            &holder,
            "compute.count",
            &format!("{job} on {from}"),
            &cap,
            &format!("refused: {reason}"),
            0,
        );
        JobReply::Refused(reason).encode()
    };
    let revocations: RevocationSet = match super::revocations(node).await {
        Ok(r) => r,
        Err(reason) => return JobReply::Unavailable(reason).encode(),
    };
    let verified = match compute.verify_chain(&chain, &revocations) {
        Ok(verified) => verified,
        Err(reason) => return refuse(reason),
    };
    match counter_of(&chain) {
        Ok(Some(counter)) if counter == node.config.name => {}
        Ok(_) => {
            return refuse(format!(
                "{} does not count the runs of this capability",
                node.config.name
            ));
        }
        Err(reason) => return refuse(reason),
    }
    // Only a device the capability lets run it has a run counted.
    let allowed = verified
        .grants
        .iter()
        .filter(|g| g.resource == Resource::Compute)
        .all(|g| g.caveats.devices.as_ref().is_none_or(|d| d.contains(from)));
    if !allowed {
        return refuse(format!("the capability does not allow running on {from}"));
    }
    match compute.count_runs(&chain) {
        Ok(number) => {
            audit(
                node,
                &holder,
                "compute.count",
                &format!("{job} on {from}"),
                &cap,
                &format!("allowed: run {number}"),
                0,
            );
            let mut out = COUNTED.to_vec();
            out.extend_from_slice(&number.to_be_bytes());
            out
        }
        Err(reason) => refuse(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_reservation_is_not_read() {
        assert!(decode_reservation(b"HRUN-RSV").is_none());
        assert!(decode_reservation(b"HRUN-RSV\x05ab").is_none());
        assert!(decode_reservation(b"HRUN-RSV\x00junk").is_none());
        assert!(decode_reservation(b"nothing").is_none());
    }
}
