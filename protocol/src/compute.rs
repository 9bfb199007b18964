//! Computations that travel to the data: the job a holder sends, the reply, the
//! receipt the executing node signs, and the choice of where a job runs.
//!
//! ```text
//! job      "HJOB" 01 bytes module, bytes chain, str params, kind, bytes invocation
//! kind     u8 1 (run) | u8 2 str app str store (deploy a continuous app)
//! signed   "HJOB-REQ" 01 module_hash(32) str params kind    what the invocation signs
//! reply    "HJRP" 01 u8 tag ...
//!          1 done       str result, bytes receipt
//!          2 deployed   str app, str device
//!          3 refused    str reason        (a capability or policy says no)
//!          4 unavailable str reason       (no holder of the data is online)
//!          5 failed     str reason        (the computation trapped, ran out, erred)
//! receipt  "HRCP" 01 job(16) str ran_on, node(32), module_hash(32), cap_id(32),
//!          varint n, n × (str store, digest(32)), result_hash(32), varint fuel,
//!          varint finished
//! signed receipt = receipt, bytes certificate (the node's device certificate), sig(64)
//!          over "hearth/v1/receipt" || receipt
//! ```

use sha2::{Digest as _, Sha256};

use crate::capability::{
    CapId, Chain, ModuleHash, RevocationSet, Role, SignedInvocation, Verifier, VerifierConfig,
};
use crate::device::verify_certificate;
use crate::encoding::{DecodeError, Reader, Writer};
use crate::key::{PublicKey, SecretKey, Signature};
use crate::time::UnixMillis;

const JOB_MAGIC: &[u8; 4] = b"HJOB";
const REPLY_MAGIC: &[u8; 4] = b"HJRP";
const RECEIPT_MAGIC: &[u8; 4] = b"HRCP";
const VERSION: u8 = 1;
/// What a receipt's signature covers: this, then the receipt's encoding.
const RECEIPT_DOMAIN: &[u8] = b"hearth/v1/receipt";

/// Largest module (a compiled component) a job may carry.
pub const MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;
/// Largest parameters text.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
/// Largest result text a reply may carry (a capability's cap is usually far lower).
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
/// Largest encoded job.
pub const MAX_JOB_BYTES: usize = MAX_MODULE_BYTES + 256 * 1024;
/// Largest encoded reply.
pub const MAX_REPLY_BYTES: usize = MAX_RESULT_BYTES + MAX_RECEIPT_BYTES + 1024;
/// Most stores one receipt lists (and one run may read).
pub const MAX_RECEIPT_STORES: usize = 256;
const MAX_NAME: usize = 128;
/// Longest reason in a reply; longer ones are cut when encoded.
pub const MAX_REASON: usize = 4096;
const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Largest signed receipt: the stores read, the device certificate, the rest.
const MAX_RECEIPT_BYTES: usize = MAX_CHAIN_BYTES + MAX_RECEIPT_STORES * (MAX_NAME + 40) + 1024;

/// What a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Run once and return the result.
    Run,
    /// Install as a continuous app named `app`, run on new readings of `store`.
    Deploy {
        /// The app's name.
        app: String,
        /// The store whose new readings trigger it.
        store: String,
    },
}

impl JobKind {
    fn encode(&self, w: &mut Writer) {
        match self {
            JobKind::Run => w.u8(1),
            JobKind::Deploy { app, store } => {
                w.u8(2);
                w.str(app);
                w.str(store);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("job kind")? {
            1 => Ok(JobKind::Run),
            2 => Ok(JobKind::Deploy {
                app: r.str(MAX_NAME, "app name")?.to_owned(),
                store: r.str(MAX_NAME, "store name")?.to_owned(),
            }),
            tag => Err(DecodeError::UnknownTag {
                what: "job kind",
                tag,
            }),
        }
    }
}

/// A computation sent to the mesh: the module, the holder's capability chain, the
/// caller's parameters and the holder's signature over all of it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The component's bytes.
    pub module: Vec<u8>,
    /// The capability chain whose leaf the holder uses.
    pub chain: Chain,
    /// The caller's parameters, JSON text.
    pub params: String,
    /// Run once, or deploy as an app.
    pub kind: JobKind,
    /// The holder's signature over [`Job::signed_request`].
    pub invocation: SignedInvocation,
}

/// A job's id: the first 16 bytes of the hash of its invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub [u8; 16]);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Job {
    /// The bytes the holder's invocation signs: the module's hash, the parameters and
    /// the kind, so none of them can be swapped on the way.
    pub fn signed_request(module_hash: &ModuleHash, params: &str, kind: &JobKind) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + params.len());
        w.raw(b"HJOB-REQ");
        w.u8(VERSION);
        w.raw(&module_hash.0);
        w.str(params);
        kind.encode(&mut w);
        w.into_bytes()
    }

    /// The module's hash.
    pub fn module_hash(&self) -> ModuleHash {
        ModuleHash::of(&self.module)
    }

    /// This job's id.
    pub fn id(&self) -> JobId {
        let digest = Sha256::digest(self.invocation.encode());
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        JobId(id)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let chain = self.chain.encode();
        let invocation = self.invocation.encode();
        let mut w = Writer::with_capacity(self.module.len() + chain.len() + 512);
        w.raw(JOB_MAGIC);
        w.u8(VERSION);
        w.varint(self.module.len() as u64);
        w.raw(&self.module);
        w.varint(chain.len() as u64);
        w.raw(&chain);
        w.str(&self.params);
        self.kind.encode(&mut w);
        w.varint(invocation.len() as u64);
        w.raw(&invocation);
        w.into_bytes()
    }

    /// Decodes a job; bounded by [`MAX_JOB_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::bounded(bytes, MAX_JOB_BYTES, "job")?;
        r.magic(JOB_MAGIC, VERSION, "job")?;
        let len = r.len(MAX_MODULE_BYTES, "module")?;
        let module = r.take(len, "module")?.to_vec();
        let len = r.len(MAX_CHAIN_BYTES, "capability chain")?;
        let chain = Chain::decode(r.take(len, "capability chain")?)?;
        let params = r.str(MAX_PARAMS_BYTES, "params")?.to_owned();
        let kind = JobKind::decode(&mut r)?;
        let len = r.len(1024, "invocation")?;
        let invocation = SignedInvocation::decode(r.take(len, "invocation")?)?;
        r.finish("job")?;
        Ok(Self {
            module,
            chain,
            params,
            kind,
            invocation,
        })
    }
}

/// The answer to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobReply {
    /// It ran: its result and the executing node's receipt.
    Done {
        /// The result, JSON text.
        result: String,
        /// The signed receipt.
        receipt: Box<SignedReceipt>,
    },
    /// The app was installed on `device`.
    Deployed {
        /// The app's name.
        app: String,
        /// Where it runs.
        device: String,
    },
    /// A capability or policy refused it.
    Refused(String),
    /// No device holding the data could run it.
    Unavailable(String),
    /// It ran and failed: a trap, a limit, or the computation's own error.
    Failed(String),
}

impl JobReply {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(REPLY_MAGIC);
        w.u8(VERSION);
        match self {
            JobReply::Done { result, receipt } => {
                w.u8(1);
                w.str(result);
                let receipt = receipt.encode();
                w.varint(receipt.len() as u64);
                w.raw(&receipt);
            }
            JobReply::Deployed { app, device } => {
                w.u8(2);
                w.str(app);
                w.str(device);
            }
            JobReply::Refused(reason) => {
                w.u8(3);
                w.str(cut(reason));
            }
            JobReply::Unavailable(reason) => {
                w.u8(4);
                w.str(cut(reason));
            }
            JobReply::Failed(reason) => {
                w.u8(5);
                w.str(cut(reason));
            }
        }
        w.into_bytes()
    }

    /// Decodes a reply; bounded by [`MAX_REPLY_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::bounded(bytes, MAX_REPLY_BYTES, "job reply")?;
        r.magic(REPLY_MAGIC, VERSION, "job reply")?;
        let reply = match r.u8("reply")? {
            1 => {
                let result = r.str(MAX_RESULT_BYTES, "result")?.to_owned();
                let len = r.len(MAX_RECEIPT_BYTES, "receipt")?;
                let receipt = Box::new(SignedReceipt::decode(r.take(len, "receipt")?)?);
                JobReply::Done { result, receipt }
            }
            2 => JobReply::Deployed {
                app: r.str(MAX_NAME, "app name")?.to_owned(),
                device: r.str(MAX_NAME, "device name")?.to_owned(),
            },
            3 => JobReply::Refused(r.str(MAX_REASON, "reason")?.to_owned()),
            4 => JobReply::Unavailable(r.str(MAX_REASON, "reason")?.to_owned()),
            5 => JobReply::Failed(r.str(MAX_REASON, "reason")?.to_owned()),
            tag => return Err(DecodeError::UnknownTag { what: "reply", tag }),
        };
        r.finish("job reply")?;
        Ok(reply)
    }
}

/// `reason` cut to [`MAX_REASON`] bytes (at a character boundary).
fn cut(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or("")
}

/// Which version of one store a job read: the store's digest, a hash over the heads
/// of every unit (document or chunk) of it, as the sync protocol compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVersion {
    /// The store's name.
    pub store: String,
    /// Its digest when the job read it.
    pub digest: [u8; 32],
}

/// What the executing node states about a job it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The job.
    pub job: JobId,
    /// The device it ran on.
    pub ran_on: String,
    /// That device's node key, which signs the receipt.
    pub node: PublicKey,
    /// The module that ran.
    pub module_hash: ModuleHash,
    /// The capability it ran under (the chain's leaf).
    pub cap_id: CapId,
    /// Every store it read, and which version.
    pub data_heads: Vec<StoreVersion>,
    /// SHA-256 of the result text.
    pub result_hash: [u8; 32],
    /// Fuel the run used.
    pub fuel: u64,
    /// When it finished.
    pub finished: UnixMillis,
}

impl Receipt {
    /// The canonical encoding (what the signature covers).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.raw(RECEIPT_MAGIC);
        w.u8(VERSION);
        w.raw(&self.job.0);
        w.str(&self.ran_on);
        w.raw(self.node.as_bytes());
        w.raw(&self.module_hash.0);
        w.raw(&self.cap_id.0);
        w.varint(self.data_heads.len() as u64);
        for version in &self.data_heads {
            w.str(&version.store);
            w.raw(&version.digest);
        }
        w.raw(&self.result_hash);
        w.varint(self.fuel);
        w.varint(self.finished.0);
        w.into_bytes()
    }

    fn signing_message(&self) -> Vec<u8> {
        [RECEIPT_DOMAIN, &self.encode()].concat()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.magic(RECEIPT_MAGIC, VERSION, "receipt")?;
        let job = JobId(r.array("job id")?);
        let ran_on = r.str(MAX_NAME, "device name")?.to_owned();
        let node = PublicKey::from_bytes(r.array("node key")?);
        if !node.is_valid_point() {
            return Err(DecodeError::BadKey { what: "node key" });
        }
        let module_hash = ModuleHash(r.array("module hash")?);
        let cap_id = CapId(r.array("capability id")?);
        let n = r.len(MAX_RECEIPT_STORES, "stores read")?;
        let mut data_heads = Vec::with_capacity(n);
        for _ in 0..n {
            data_heads.push(StoreVersion {
                store: r.str(MAX_NAME, "store name")?.to_owned(),
                digest: r.array("store digest")?,
            });
        }
        let result_hash = r.array("result hash")?;
        let fuel = r.varint("fuel")?;
        let finished = UnixMillis(r.varint("finish time")?);
        Ok(Self {
            job,
            ran_on,
            node,
            module_hash,
            cap_id,
            data_heads,
            result_hash,
            fuel,
            finished,
        })
    }

    /// Signs the receipt with the executing node's key; `certificate` is that node's
    /// device certificate, so anyone with the owner's public key can check it offline.
    pub fn sign(self, key: &SecretKey, certificate: Chain) -> SignedReceipt {
        let signature = key.sign(&self.signing_message());
        SignedReceipt {
            receipt: self,
            certificate,
            signature,
        }
    }
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The signature is not the node key's.
    #[error("the receipt's signature does not match its node key")]
    BadSignature,
    /// The certificate is not a valid device certificate of this mesh.
    #[error("the receipt's device certificate is not valid for this mesh: {0}")]
    Certificate(String),
    /// The certificate is for another device or key than the receipt names.
    #[error("the receipt's device certificate names {cert}, not the device that signed ({signer})")]
    WrongDevice {
        /// Who the certificate names.
        cert: String,
        /// Who the receipt names.
        signer: String,
    },
    /// The result does not hash to the receipt's result hash.
    #[error("the result does not match the receipt's result hash")]
    ResultMismatch,
}

/// A receipt with the executing node's device certificate and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    /// What is stated.
    pub receipt: Receipt,
    /// The node's device certificate.
    pub certificate: Chain,
    /// The node key's signature over the receipt's encoding.
    pub signature: Signature,
}

impl SignedReceipt {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(&self.receipt.encode());
        let certificate = self.certificate.encode();
        w.varint(certificate.len() as u64);
        w.raw(&certificate);
        w.raw(&self.signature.to_bytes());
        w.into_bytes()
    }

    /// Decodes a signed receipt (it does not verify it).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::bounded(bytes, MAX_RECEIPT_BYTES, "receipt")?;
        let receipt = Receipt::decode(&mut r)?;
        let len = r.len(MAX_CHAIN_BYTES, "device certificate")?;
        let certificate = Chain::decode(r.take(len, "device certificate")?)?;
        let signature = Signature::from_bytes(r.array("signature")?);
        r.finish("receipt")?;
        Ok(Self {
            receipt,
            certificate,
            signature,
        })
    }

    /// Checks, offline, that a device of the mesh owned by `owner` signed this receipt
    /// (its certificate valid when the job finished) and, with `result`, that the
    /// result is the one the receipt names. Revocations after the fact are not known
    /// offline; a device revoked later does not void its earlier receipts.
    pub fn verify(&self, owner: &PublicKey, result: Option<&str>) -> Result<(), ReceiptError> {
        let r = &self.receipt;
        if !r.node.verify(&r.signing_message(), &self.signature) {
            return Err(ReceiptError::BadSignature);
        }
        let mut verifier = Verifier::new(*owner, VerifierConfig::default());
        let device = verify_certificate(
            &mut verifier,
            &self.certificate,
            r.finished,
            &RevocationSet::new(*owner),
        )
        .map_err(|err| ReceiptError::Certificate(err.to_string()))?;
        if device.node_key != r.node || device.name != r.ran_on {
            return Err(ReceiptError::WrongDevice {
                cert: device.name,
                signer: r.ran_on.clone(),
            });
        }
        if let Some(result) = result
            && result_hash(result) != r.result_hash
        {
            return Err(ReceiptError::ResultMismatch);
        }
        Ok(())
    }
}

/// SHA-256 of a result's text.
pub fn result_hash(result: &str) -> [u8; 32] {
    Sha256::digest(result.as_bytes()).into()
}

/// A device that holds every store a job reads, as the node choosing where to run it
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The device's name.
    pub device: String,
    /// Its role.
    pub role: Role,
    /// Connected now (or the choosing node itself).
    pub online: bool,
    /// Every store the job reads is in sync on it, as last confirmed.
    pub fresh: bool,
    /// Is it the choosing node itself (no hop needed)?
    pub local: bool,
}

impl Candidate {
    /// A mobile device is taken to be on a metered, battery-powered link.
    pub fn metered(&self) -> bool {
        self.role == Role::Mobile
    }
}

/// Where to run a job among `candidates`: online ones only; then fresh before stale,
/// home before cloud before mobile, unmetered before metered, the local node before a
/// hop, and by name so that the choice is deterministic.
pub fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    fn role_rank(role: Role) -> u8 {
        match role {
            Role::Home => 0,
            Role::Cloud => 1,
            Role::Mobile => 2,
        }
    }
    candidates.iter().filter(|c| c.online).min_by(|a, b| {
        (
            !a.fresh,
            role_rank(a.role),
            a.metered(),
            !a.local,
            &a.device,
        )
            .cmp(&(
                !b.fresh,
                role_rank(b.role),
                b.metered(),
                !b.local,
                &b.device,
            ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::capability::{Actions, Capability, Grant, Invocation, Resource};
    use crate::device::issue_certificate;
    use crate::key::{HolderKey, NodeKey, OwnerKey};

    fn job() -> (Job, OwnerKey) {
        let owner = OwnerKey::from_seed([1; 32]);
        let holder = HolderKey::from_seed([2; 32]);
        let module = b"\0asm fake".to_vec();
        let chain = Chain::root(
            Capability {
                issuer: owner.public(),
                audience: holder.public(),
                parent: None,
                grants: vec![Grant::new(Resource::Compute, Actions::RUN)],
                not_before: UnixMillis(0),
                expires: UnixMillis(u64::MAX),
                nonce: [0; 16],
            }
            .sign(owner.secret())
            .unwrap(),
        );
        let kind = JobKind::Deploy {
            app: "alerts".into(),
            store: "os-monitor".into(),
        };
        let request = Job::signed_request(&ModuleHash::of(&module), "{}", &kind);
        let invocation = Invocation {
            cap_id: chain.leaf().id(),
            request_digest: Invocation::digest_request(&request),
            timestamp: UnixMillis(5),
            nonce: [7; 16],
        }
        .sign(holder.secret());
        (
            Job {
                module,
                chain,
                params: "{}".into(),
                kind,
                invocation,
            },
            owner,
        )
    }

    /// A receipt for `job`, signed by the device "home" of `owner`'s mesh.
    fn receipt(job: &Job, owner: &OwnerKey, result: &str) -> SignedReceipt {
        let node = NodeKey::from_seed([3; 32]);
        let cert = issue_certificate(
            owner.secret(),
            None,
            node.public(),
            "home",
            Role::Home,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            [1; 16],
        )
        .unwrap();
        Receipt {
            job: job.id(),
            ran_on: "home".into(),
            node: node.public(),
            module_hash: job.module_hash(),
            cap_id: job.chain.leaf().id(),
            data_heads: vec![StoreVersion {
                store: "os-monitor".into(),
                digest: [9; 32],
            }],
            result_hash: result_hash(result),
            fuel: 1234,
            finished: UnixMillis(99),
        }
        .sign(node.secret(), cert)
    }

    #[test]
    fn jobs_and_replies_round_trip() {
        let (job, owner) = job();
        let back = Job::decode(&job.encode()).unwrap();
        assert_eq!(back.encode(), job.encode());
        assert_eq!(back.id(), job.id());
        let receipt = receipt(&job, &owner, "42");
        for reply in [
            JobReply::Done {
                result: "42".into(),
                receipt: Box::new(receipt.clone()),
            },
            JobReply::Deployed {
                app: "a".into(),
                device: "home".into(),
            },
            JobReply::Refused("no".into()),
            JobReply::Unavailable("off".into()),
            JobReply::Failed("trap".into()),
        ] {
            assert_eq!(JobReply::decode(&reply.encode()).unwrap(), reply);
        }
        receipt.verify(&owner.public(), Some("42")).unwrap();
        // A reason too long for a reply is cut, not made undecodable.
        let long = JobReply::Failed("é".repeat(MAX_REASON));
        match JobReply::decode(&long.encode()).unwrap() {
            JobReply::Failed(reason) => assert!(reason.len() <= MAX_REASON && reason.len() > 4000),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            receipt.verify(&owner.public(), Some("43")),
            Err(ReceiptError::ResultMismatch)
        );
        let stranger = OwnerKey::from_seed([8; 32]);
        assert!(matches!(
            receipt.verify(&stranger.public(), None),
            Err(ReceiptError::Certificate(_))
        ));
        let mut forged = receipt.clone();
        forged.receipt.fuel = 1;
        assert_eq!(
            forged.verify(&owner.public(), None),
            Err(ReceiptError::BadSignature)
        );
        // Every truncation is an error, never a panic.
        let bytes = receipt.encode();
        for end in 0..bytes.len() {
            assert!(SignedReceipt::decode(&bytes[..end]).is_err());
        }
        let bytes = job.encode();
        for end in (0..bytes.len()).step_by(3) {
            assert!(Job::decode(&bytes[..end]).is_err());
        }
    }

    /// The fuzz seeds (`fuzz/seeds/compute_decode/`) are today's encodings of these
    /// documents (everything here is deterministic). `HEARTH_WRITE_SEEDS=1` rewrites them
    /// after a format change.
    #[test]
    fn fuzz_seeds_are_current() {
        let (job, owner) = job();
        let receipt = receipt(&job, &owner, "{}");
        let with = |tag: u8, bytes: Vec<u8>| [vec![tag], bytes].concat();
        let done = JobReply::Done {
            result: "{}".into(),
            receipt: Box::new(receipt.clone()),
        };
        let seeds = [
            ("job", with(0, job.encode())),
            ("reply-done", with(1, done.encode())),
            (
                "reply-refused",
                with(1, JobReply::Refused("no".into()).encode()),
            ),
            ("receipt", with(2, receipt.encode())),
        ];
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/compute_decode");
        let write = std::env::var_os("HEARTH_WRITE_SEEDS").is_some();
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{} is stale: run this test with HEARTH_WRITE_SEEDS=1",
                path.display()
            );
        }
    }

    #[test]
    fn placement_prefers_online_fresh_home_unmetered_local() {
        let c = |device: &str, role, online, fresh, local| Candidate {
            device: device.into(),
            role,
            online,
            fresh,
            local,
        };
        let all = [
            c("phone", Role::Mobile, true, true, true),
            c("cloud", Role::Cloud, true, true, false),
            c("home", Role::Home, true, true, false),
            c("home2", Role::Home, false, true, false),
        ];
        assert_eq!(choose(&all).unwrap().device, "home");
        let stale_home = [
            c("home", Role::Home, true, false, false),
            c("phone", Role::Mobile, true, true, true),
        ];
        assert_eq!(choose(&stale_home).unwrap().device, "phone");
        assert!(choose(&[c("home", Role::Home, false, true, false)]).is_none());
        let two_homes = [
            c("b", Role::Home, true, true, false),
            c("a", Role::Home, true, true, true),
        ];
        assert_eq!(choose(&two_homes).unwrap().device, "a");
    }
}
