//! Record validation by namespace, as go-libp2p-record's `NamespacedValidator`: a key
//! has the shape `/namespace/rest`, the namespace names a [`Validator`], and a record in
//! a namespace with no validator is refused (so a DHT cannot be used as free storage for
//! anything a stranger puts). `/pk/` is built in: its value is a public key that must
//! hash to the peer ID the key names.

use std::collections::HashMap;
use std::sync::Arc;

use strata_core::{PeerId, PublicKey};

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The key is not `/namespace/rest`.
    #[error("record key has no namespace (expected /namespace/...)")]
    NoNamespace,
    /// No validator is registered for the key's namespace.
    #[error("no validator for the record namespace {0:?}")]
    UnknownNamespace(String),
    /// The namespace's validator refused the value.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// The value is larger than the store takes.
    #[error("record value of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record already stored is better than this one (the selector chose it).
    #[error("a better record is already stored")]
    Outdated,
}

/// Checks records of one namespace and chooses the best of several.
pub trait Validator: Send + Sync + 'static {
    /// Whether `value` is a valid record for `key`.
    fn validate(&self, key: &[u8], value: &[u8]) -> Result<(), String>;

    /// The index of the best of `values` (all valid, at least one) for `key`.
    fn select(&self, key: &[u8], values: &[&[u8]]) -> usize;
}

/// The `/pk/` namespace: the key is `/pk/` followed by a peer ID's bytes, the value the
/// protobuf encoding of the public key whose peer ID that is. Every valid value is as
/// good as another.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicKeyValidator;

impl Validator for PublicKeyValidator {
    fn validate(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let id_bytes = key
            .strip_prefix(b"/pk/")
            .ok_or_else(|| "a /pk/ key must start with /pk/".to_owned())?;
        let id = PeerId::from_bytes(id_bytes).map_err(|e| format!("bad peer ID in key: {e}"))?;
        let public = PublicKey::try_decode_protobuf(value)
            .map_err(|e| format!("value is not a public key: {e}"))?;
        if public.to_peer_id() != id {
            return Err("the public key does not match the peer ID in the key".to_owned());
        }
        Ok(())
    }

    fn select(&self, _key: &[u8], _values: &[&[u8]]) -> usize {
        0
    }
}

/// Accepts any value; the first of several is the best. For namespaces an application
/// owns and trusts (the CLI's `strata`), never for a public DHT's shared namespaces.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAnyValidator;

impl Validator for AcceptAnyValidator {
    fn validate(&self, _key: &[u8], _value: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn select(&self, _key: &[u8], _values: &[&[u8]]) -> usize {
        0
    }
}

/// Validators by namespace. The default holds `pk` only.
#[derive(Clone)]
pub struct Validators {
    by_namespace: HashMap<String, Arc<dyn Validator>>,
}

impl Default for Validators {
    fn default() -> Self {
        let mut v = Validators::empty();
        v.insert("pk", PublicKeyValidator);
        v
    }
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.by_namespace.keys().collect();
        names.sort();
        f.debug_struct("Validators")
            .field("namespaces", &names)
            .finish()
    }
}

impl Validators {
    /// No validator at all: every record is refused.
    pub fn empty() -> Self {
        Validators {
            by_namespace: HashMap::new(),
        }
    }

    /// Registers (or replaces) the validator of `namespace` (without slashes: `"ipns"`
    /// for keys `/ipns/...`).
    pub fn insert(&mut self, namespace: impl Into<String>, validator: impl Validator) {
        self.by_namespace
            .insert(namespace.into(), Arc::new(validator));
    }

    /// Registers a shared validator.
    pub fn insert_arc(&mut self, namespace: impl Into<String>, validator: Arc<dyn Validator>) {
        self.by_namespace.insert(namespace.into(), validator);
    }

    /// The validator for `key`'s namespace.
    pub fn for_key(&self, key: &[u8]) -> Result<&Arc<dyn Validator>, RecordError> {
        let ns = namespace(key).ok_or(RecordError::NoNamespace)?;
        let name = std::str::from_utf8(ns).map_err(|_| RecordError::NoNamespace)?;
        self.by_namespace
            .get(name)
            .ok_or_else(|| RecordError::UnknownNamespace(name.to_owned()))
    }

    /// Checks `value` for `key`.
    pub fn validate(&self, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        self.for_key(key)?
            .validate(key, value)
            .map_err(RecordError::Invalid)
    }

    /// The index of the best of `values` for `key` (0 when the namespace is unknown).
    pub fn select(&self, key: &[u8], values: &[&[u8]]) -> usize {
        match self.for_key(key) {
            Ok(v) if !values.is_empty() => v.select(key, values).min(values.len() - 1),
            _ => 0,
        }
    }
}

/// The namespace of `/namespace/rest` (a non-empty namespace between the first two
/// slashes, as go-libp2p-record's `SplitKey`).
fn namespace(key: &[u8]) -> Option<&[u8]> {
    let rest = key.strip_prefix(b"/")?;
    let end = rest.iter().position(|&b| b == b'/')?;
    (end > 0).then(|| &rest[..end])
}

/// The `/pk/` record of `public`: its key and value.
pub fn public_key_record(public: &PublicKey) -> (Vec<u8>, Vec<u8>) {
    let mut key = b"/pk/".to_vec();
    key.extend_from_slice(&public.to_peer_id().to_bytes());
    (key, public.encode_protobuf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_split_like_go() {
        assert_eq!(namespace(b"/pk/abc"), Some(&b"pk"[..]));
        assert_eq!(namespace(b"/strata/name/x"), Some(&b"strata"[..]));
        assert_eq!(namespace(b"pk/abc"), None);
        assert_eq!(namespace(b"/pk"), None);
        assert_eq!(namespace(b"/pk/"), Some(&b"pk"[..]));
        assert_eq!(namespace(b"//x"), None);
        assert_eq!(namespace(b""), None);
    }

    #[test]
    fn a_pk_record_must_hash_to_its_key() {
        let v = Validators::default();
        let a = strata_core::identity::keypair_from_seed(1).public();
        let b = strata_core::identity::keypair_from_seed(2).public();
        let (key, value) = public_key_record(&a);
        assert_eq!(v.validate(&key, &value), Ok(()));
        // Another key's bytes under a's ID.
        let (_, wrong) = public_key_record(&b);
        assert!(matches!(
            v.validate(&key, &wrong),
            Err(RecordError::Invalid(_))
        ));
        assert!(matches!(
            v.validate(&key, b"junk"),
            Err(RecordError::Invalid(_))
        ));
        assert!(matches!(
            v.validate(b"/pk/notapeer", &value),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn unknown_namespaces_are_refused_until_registered() {
        let mut v = Validators::default();
        assert_eq!(
            v.validate(b"/strata/name", b"x"),
            Err(RecordError::UnknownNamespace("strata".into()))
        );
        assert_eq!(v.validate(b"plain", b"x"), Err(RecordError::NoNamespace));
        v.insert("strata", AcceptAnyValidator);
        assert_eq!(v.validate(b"/strata/name", b"x"), Ok(()));
        assert_eq!(v.select(b"/strata/name", &[b"a", b"b"]), 0);
    }
}
