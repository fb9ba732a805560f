//! TSIG (RFC 8945): verifying signed queries, signing their answers (one
//! message, or every message of a zone transfer), and signing NOTIFY. The
//! HMAC and the TSIG record layout are hickory-proto's; the chaining of
//! transfer messages is here.

use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::{make_tsig_record, TsigAlgorithm, TsigError, TSIG};
use hickory_proto::rr::{Name, Record, TSigResponseContext, TSigner};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use serde::Deserialize;

/// Seconds a signature's time may differ from ours.
const FUDGE: u16 = 300;

/// A key as written in `[[dns.tsig_keys]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key name both sides use (`xfr.mayfirst.local`).
    pub name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// The shared secret, base64 (as `tsig-keygen` or `keymgr -t` print it).
    pub secret: String,
}

fn default_algorithm() -> String {
    "hmac-sha256".into()
}

impl KeyConfig {
    pub fn signer(&self) -> Result<TSigner, String> {
        let algorithm = match self.algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(format!(
                    "key `{}`: algorithm `{other}` is not one of hmac-sha256, hmac-sha384, hmac-sha512",
                    self.name
                ))
            }
        };
        let secret = data_encoding::BASE64
            .decode(self.secret.trim().as_bytes())
            .map_err(|e| format!("key `{}`: secret is not base64: {e}", self.name))?;
        if secret.len() < 16 {
            return Err(format!("key `{}`: secret shorter than 16 bytes", self.name));
        }
        let name = crate::config::fqdn(&self.name).map_err(|e| format!("key `{}`: {e}", self.name))?;
        TSigner::new(secret, algorithm, name, FUDGE).map_err(|e| format!("key `{}`: {e}", self.name))
    }
}

/// The outcome of checking a query's TSIG.
pub enum Checked {
    /// No TSIG in the query.
    Unsigned,
    /// A good signature: answers are signed with the same key.
    Signed(Signed),
    /// A bad one: answer NOTAUTH with this (unsigned, or BADTIME-signed)
    /// TSIG context.
    Refused(TSigResponseContext),
}

/// What signing the answer to a signed query needs.
#[derive(Clone)]
pub struct Signed {
    pub signer: TSigner,
    request_mac: Vec<u8>,
    id: u16,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed").field("key", self.key_name()).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Signed {
    pub fn key_name(&self) -> &Name {
        self.signer.signer_name()
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks the TSIG of `packet` (already parsed into `query`) against `keys`.
pub fn check(keys: &[TSigner], packet: &[u8], query: &Message) -> Checked {
    let Some(sig) = &query.signature else { return Checked::Unsigned };
    let id = query.metadata.id;
    let now = now();
    let Some(signer) = keys.iter().find(|k| k.signer_name() == &sig.name && *k.algorithm() == sig.data.algorithm)
    else {
        return Checked::Refused(TSigResponseContext::unknown_key(id, now, sig.name.clone()));
    };
    match signer.verify_message_byte(packet, None, true) {
        Err(_) => Checked::Refused(TSigResponseContext::bad_signature(id, now, signer.clone())),
        Ok((mac, _, window)) if !window.contains(&now) && window.end != now => {
            Checked::Refused(TSigResponseContext::new(id, now, signer.clone(), mac, Some(TsigError::BadTime)))
        }
        Ok((mac, _, _)) => Checked::Signed(Signed { signer: signer.clone(), request_mac: mac, id }),
    }
}

/// Appends `record` to the encoded `message` as its last additional record.
fn append(mut message: Vec<u8>, record: &Record<TSIG>) -> Vec<u8> {
    let mut tail = Vec::new();
    if record.emit(&mut BinEncoder::new(&mut tail)).is_err() {
        return message;
    }
    let arcount = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
    message.extend_from_slice(&tail);
    message
}

/// Signs (or, for refusals, marks) one answer with the context.
pub fn sign_with(ctx: TSigResponseContext, message: Vec<u8>) -> Vec<u8> {
    match ctx.sign(&message) {
        Ok(record) => append(message, &record),
        Err(_) => message,
    }
}

/// Signs a sequence of answers (a zone transfer): the first covers the
/// query's MAC, each later one the MAC before it (RFC 8945 §5.3.1).
pub struct StreamSigner {
    signed: Signed,
    prev_mac: Option<Vec<u8>>,
}

impl StreamSigner {
    pub fn new(signed: Signed) -> Self {
        StreamSigner { signed, prev_mac: None }
    }

    pub fn sign(&mut self, message: Vec<u8>) -> Vec<u8> {
        let now = now();
        let s = &self.signed;
        let Some(prev) = &self.prev_mac else {
            let ctx = TSigResponseContext::new(s.id, now, s.signer.clone(), s.request_mac.clone(), None);
            let Ok(record) = ctx.sign(&message) else { return message };
            self.prev_mac = Some(record.data.mac.clone());
            return append(message, &record);
        };
        // Later messages: prior MAC, the message, and the timers only.
        let mut tbs = Vec::with_capacity(prev.len() + message.len() + 10);
        tbs.extend_from_slice(&(prev.len() as u16).to_be_bytes());
        tbs.extend_from_slice(prev);
        tbs.extend_from_slice(&message);
        tbs.extend_from_slice(&((now >> 32) as u16).to_be_bytes());
        tbs.extend_from_slice(&(now as u32).to_be_bytes());
        tbs.extend_from_slice(&FUDGE.to_be_bytes());
        let Ok(mac) = s.signer.sign(&tbs) else { return message };
        let tsig = TSIG::new(s.signer.algorithm().clone(), now, FUDGE, mac.clone(), s.id, None, Vec::new());
        self.prev_mac = Some(mac);
        append(message, &make_tsig_record(s.key_name().clone(), tsig))
    }
}

/// A NOTIFY (or any request) signed with `signer`, encoded.
pub fn sign_request(signer: &TSigner, mut msg: Message) -> Option<Vec<u8>> {
    let (record, _) = signer.sign_message(&msg, now()).ok()?;
    msg.set_signature(record);
    msg.to_vec().ok()
}
