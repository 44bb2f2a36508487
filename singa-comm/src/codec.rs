//! Message headers as bytes, for engines that carry bytes between processes (MPI).
//!
//! A message crosses as a fixed header (addresses, kind, target, slice, version, and the
//! payload's dtype and shape) and, when it has a payload, the payload's elements in native
//! byte order as a second transfer, sent straight from the tensor and received straight into
//! one. The receiving side keeps a payload tensor per sender, receiver, kind, target and slice,
//! reused for the next message with the same key (see `wire.rs` for why receivers are done
//! with a payload before the next one of its key comes), or the receiver's own tensor for that
//! key when it named one (`Endpoints::receive_into`); the control plane's payloads get
//! tensors of their own.

use crate::fabric::{is_control, PayloadKey, ReceiveTargets};
use singa_core::{Addr, DType, DeviceRef, Error, Msg, MsgKind, Result, Role, Shape, Tensor};
use std::collections::HashMap;

/// Every message kind, by its number.
const KINDS: [MsgKind; 11] = [
    MsgKind::Get,
    MsgKind::Put,
    MsgKind::Update,
    MsgKind::Updated,
    MsgKind::Sync,
    MsgKind::Bridge,
    MsgKind::Stop,
    MsgKind::Control,
    MsgKind::Report,
    MsgKind::State,
    MsgKind::Norm,
];

/// Every role, by its number.
const ROLES: [Role; 6] = [
    Role::Worker,
    Role::Server,
    Role::Stub,
    Role::Bridge,
    Role::Control,
    Role::Node,
];

/// The bytes before the dimensions.
const FIXED: usize = 40;

fn put_addr(out: &mut [u8], a: Addr) {
    out[0..4].copy_from_slice(&a.group.to_le_bytes());
    out[4..8].copy_from_slice(&a.id.to_le_bytes());
    out[8] = a.role as u8;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_addr(b: &[u8]) -> Result<Addr> {
    let role = *ROLES
        .get(b[8] as usize)
        .ok_or_else(|| Error::invalid(format!("a message names role {}, unknown", b[8])))?;
    Ok(Addr {
        group: u32_at(b, 0),
        id: u32_at(b, 4),
        role,
    })
}

/// The longest header: every dimension a shape can have.
pub(crate) const MAX_HEADER: usize = FIXED + 4 * singa_core::MAX_DIMS;

/// Writes the header of `msg` into `buf`; returns its length.
pub(crate) fn encode_header(msg: &Msg, buf: &mut [u8; MAX_HEADER]) -> Result<usize> {
    let payload = msg.payload.as_ref().into_option();
    let ndim = payload.map_or(0, |t| t.shape().dims().len());
    let b = &mut buf[..];
    put_addr(&mut b[0..9], msg.src);
    put_addr(&mut b[9..18], msg.dst);
    b[18] = msg.kind as u8;
    b[19..23].copy_from_slice(&msg.target.to_le_bytes());
    b[23..27].copy_from_slice(&msg.slice.to_le_bytes());
    b[27..35].copy_from_slice(&msg.version.to_le_bytes());
    b[35] = u8::from(payload.is_some());
    b[36] = payload.map_or(0, |t| t.dtype() as u8);
    b[37] = ndim as u8;
    if let Some(t) = payload {
        for (i, &d) in t.shape().dims().iter().enumerate() {
            let d = u32::try_from(d)
                .map_err(|_| Error::invalid(format!("a dimension of {d} is too large to send")))?;
            b[FIXED + 4 * i..FIXED + 4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
    Ok(FIXED + 4 * ndim)
}

/// The payload tensors a receiver reuses, by sender, receiver, kind, target and slice.
pub(crate) struct Payloads {
    host: DeviceRef,
    reused: HashMap<PayloadKey, Tensor>,
    /// The receivers' own tensors for some keys (see [`crate::Endpoints::receive_into`]).
    targets: ReceiveTargets,
}

impl Payloads {
    /// Payloads made on `host`, or received into `targets` where those name the key.
    pub(crate) fn new(host: DeviceRef, targets: ReceiveTargets) -> Payloads {
        Payloads {
            host,
            reused: HashMap::new(),
            targets,
        }
    }

    /// A tensor for the payload of a message with this key, shape and dtype.
    fn tensor(&mut self, key: PayloadKey, shape: Shape, dtype: DType) -> Result<Tensor> {
        if is_control(key.2) {
            return Tensor::zeros(&self.host, shape, dtype);
        }
        let target = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|t| t.shape() == shape && t.dtype() == dtype && t.device().is_host())
            .cloned();
        if let Some(t) = target {
            return Ok(t);
        }
        match self.reused.get(&key) {
            Some(t) if t.shape() == shape && t.dtype() == dtype => Ok(t.clone()),
            _ => {
                let t = Tensor::zeros(&self.host, shape, dtype)?;
                self.reused.insert(key, t.clone());
                Ok(t)
            }
        }
    }
}

/// Whether the header `bytes` announces a payload (even one that [`decode_header`] refuses).
pub(crate) fn has_payload(bytes: &[u8]) -> bool {
    bytes.get(35).is_some_and(|&p| p != 0)
}

/// The length in bytes of the payload the header `bytes` announces (0 without one), read from
/// its dtype and dimensions alone, so that a header refused for another reason can still say
/// how much to take off; `None` when those are unreadable too.
pub(crate) fn payload_len(bytes: &[u8]) -> Option<usize> {
    if !has_payload(bytes) {
        return Some(0);
    }
    let dtype = DType::ALL.get(*bytes.get(36)? as usize)?;
    let ndim = *bytes.get(37)? as usize;
    if ndim > singa_core::MAX_DIMS || bytes.len() < FIXED + 4 * ndim {
        return None;
    }
    (0..ndim).try_fold(dtype.size(), |n, i| {
        n.checked_mul(u32_at(bytes, FIXED + 4 * i) as usize)
    })
}

/// The message whose header `bytes` hold (as [`encode_header`] wrote it), with an empty
/// tensor of `payloads` for its payload, if it has one, to receive the payload's bytes into.
pub(crate) fn decode_header(bytes: &[u8], payloads: &mut Payloads) -> Result<Msg> {
    let short = || {
        Error::invalid(format!(
            "a message header of {} bytes is cut short",
            bytes.len()
        ))
    };
    if bytes.len() < FIXED {
        return Err(short());
    }
    let src = get_addr(&bytes[0..9])?;
    let dst = get_addr(&bytes[9..18])?;
    let kind = *KINDS
        .get(bytes[18] as usize)
        .ok_or_else(|| Error::invalid(format!("a message of kind {}, unknown", bytes[18])))?;
    let target = u32_at(bytes, 19);
    let slice = u32_at(bytes, 23);
    let version = u64::from_le_bytes(bytes[27..35].try_into().expect("8 bytes"));
    let payload = match bytes[35] {
        0 => None,
        _ => {
            let dtype = *DType::ALL.get(bytes[36] as usize).ok_or_else(|| {
                Error::invalid(format!("a payload of dtype {}, unknown", bytes[36]))
            })?;
            let ndim = bytes[37] as usize;
            if bytes.len() < FIXED + 4 * ndim {
                return Err(short());
            }
            let mut dims = [0usize; singa_core::MAX_DIMS];
            let dims = dims.get_mut(..ndim).ok_or_else(|| {
                Error::invalid(format!(
                    "a payload of {ndim} dimensions, more than a shape has"
                ))
            })?;
            for (i, d) in dims.iter_mut().enumerate() {
                *d = u32_at(bytes, FIXED + 4 * i) as usize;
            }
            let shape = Shape::new(dims)?;
            Some(payloads.tensor((src, dst, kind, target, slice), shape, dtype)?)
        }
    };
    Ok(Msg {
        src,
        dst,
        kind,
        target,
        slice,
        version,
        payload: payload.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_follow_the_enums() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, r) in ROLES.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn a_refused_header_still_says_how_long_its_payload_is() {
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let addr = Addr {
            group: 0,
            id: 1,
            role: Role::Worker,
        };
        let t = Tensor::zeros(&dev, [3, 5, 7], DType::F32).unwrap();
        let mut msg = Msg {
            src: addr,
            dst: addr,
            kind: MsgKind::Update,
            target: 0,
            slice: 0,
            version: 0,
            payload: Some(t).into(),
        };
        let mut buf = [0u8; MAX_HEADER];
        let n = encode_header(&msg, &mut buf).unwrap();
        assert_eq!(payload_len(&buf[..n]), Some(3 * 5 * 7 * 4));
        // An unknown role: refused, but the payload's length is still read.
        buf[8] = 200;
        let mut payloads = Payloads::new(dev.clone(), ReceiveTargets::default());
        assert!(decode_header(&buf[..n], &mut payloads).is_err());
        assert_eq!(payload_len(&buf[..n]), Some(3 * 5 * 7 * 4));
        // An unknown dtype or a cut header: unreadable.
        let mut bad = buf;
        bad[36] = 200;
        assert_eq!(payload_len(&bad[..n]), None);
        assert_eq!(payload_len(&buf[..n - 1]), None);
        msg.payload = None.into();
        let n = encode_header(&msg, &mut buf).unwrap();
        assert_eq!(payload_len(&buf[..n]), Some(0));
    }

    #[test]
    fn headers_round_trip_and_training_payloads_reuse_their_tensor() {
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let targets = ReceiveTargets::default();
        let mut payloads = Payloads::new(dev.clone(), targets.clone());
        let src = Addr {
            group: 3,
            id: 7,
            role: Role::Bridge,
        };
        let dst = Addr {
            group: 1,
            id: 2,
            role: Role::Server,
        };
        let t = Tensor::from_slice(&dev, &[1.5f32, -2.0, 3.25, 4.0, 5.0, 6.0], [2, 3]).unwrap();
        let mut buf = [0u8; MAX_HEADER];
        let mut seen = Vec::new();
        for kind in [
            MsgKind::Update,
            MsgKind::Update,
            MsgKind::State,
            MsgKind::State,
        ] {
            let msg = Msg {
                src,
                dst,
                kind,
                target: 9,
                slice: 4,
                version: u64::MAX - 1,
                payload: Some(t.clone()).into(),
            };
            let n = encode_header(&msg, &mut buf).unwrap();
            assert!(has_payload(&buf[..n]));
            let back = decode_header(&buf[..n], &mut payloads).unwrap();
            assert_eq!(
                (
                    back.src,
                    back.dst,
                    back.kind,
                    back.target,
                    back.slice,
                    back.version
                ),
                (src, dst, kind, 9, 4, u64::MAX - 1)
            );
            let p = back.payload.into_option().unwrap();
            assert_eq!((p.shape(), p.dtype()), (t.shape(), t.dtype()));
            seen.push(p);
        }
        assert!(
            seen[0].shares_storage(&seen[1]),
            "a training payload reuses its tensor"
        );
        assert!(
            !seen[2].shares_storage(&seen[3]),
            "state gets tensors of its own"
        );
        let empty = Msg {
            src,
            dst,
            kind: MsgKind::Stop,
            target: 0,
            slice: 0,
            version: 0,
            payload: None.into(),
        };
        let n = encode_header(&empty, &mut buf).unwrap();
        assert_eq!(n, FIXED);
        assert!(!has_payload(&buf[..n]));
        assert!(decode_header(&buf[..n], &mut payloads)
            .unwrap()
            .payload
            .is_none());
        assert!(decode_header(&buf[..10], &mut payloads).is_err());

        // A key with a target of the receiver's: the payload is received into it, as long as
        // the shape and dtype agree.
        let mine = Tensor::zeros(&dev, [2, 3], DType::F32).unwrap();
        targets
            .lock()
            .unwrap()
            .insert((src, dst, MsgKind::Updated, 9, 4), mine.clone());
        let updated = |t: &Tensor| Msg {
            src,
            dst,
            kind: MsgKind::Updated,
            target: 9,
            slice: 4,
            version: 1,
            payload: Some(t.clone()).into(),
        };
        let n = encode_header(&updated(&t), &mut buf).unwrap();
        let p = decode_header(&buf[..n], &mut payloads).unwrap().payload;
        assert!(p.into_option().unwrap().shares_storage(&mine));
        let other = Tensor::zeros(&dev, [6], DType::F32).unwrap();
        let n = encode_header(&updated(&other), &mut buf).unwrap();
        let p = decode_header(&buf[..n], &mut payloads).unwrap().payload;
        assert!(
            !p.into_option().unwrap().shares_storage(&mine),
            "another shape"
        );
    }
}
