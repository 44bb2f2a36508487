//! The control plane: the coordinator's commands to the workers and servers, and their
//! reports back, as messages through the same transports as the parameters (nothing crosses
//! between processes any other way).
//!
//! A command is a [`MsgKind::Control`] message: what to do in `target` (an [`Op`]), its
//! argument in `version`, anything larger (layer states) encoded in a byte payload. A report
//! is a [`MsgKind::Report`] message to the [`COORDINATOR`](super::topology::COORDINATOR): the
//! command it answers in `target`, the same `version`, the [`Outcome`] in `slice`, and metrics
//! or an error's text in the payload. Steps and their reports carry no payload: a warm step
//! allocates nothing for them.

use singa_core::{Addr, DType, DeviceRef, Error, Msg, MsgKind, Result, Tensor};

/// What a command asks for (and what a report answers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Train step `version`.
    Step = 1,
    /// Report the training metrics accumulated since the last read.
    Metrics = 2,
    /// Restore the layers' states (data positions) from the payload.
    Restore = 3,
    /// Take part in synchronising the server groups after step `version` (Hogwild).
    Sync = 4,
    /// Get the values of every slice from the servers, as of round `version` of `Put`s.
    Refresh = 5,
    /// Send the updater state of the server's slices to the coordinator (`State` messages).
    StateOut = 6,
    /// Take in the updater state the coordinator sent (`State` messages) before this command.
    StateIn = 7,
    /// Stop.
    Stop = 8,
    /// (Reports only.) A rank has built its workers and servers.
    Ready = 9,
    /// Set the values of the fixed parameters (those no server updates) from the payload.
    Fixed = 10,
}

impl Op {
    const ALL: [Op; 10] = [
        Op::Step,
        Op::Metrics,
        Op::Restore,
        Op::Sync,
        Op::Refresh,
        Op::StateOut,
        Op::StateIn,
        Op::Stop,
        Op::Ready,
        Op::Fixed,
    ];

    fn from_u32(x: u32) -> Result<Op> {
        Op::ALL
            .into_iter()
            .find(|o| *o as u32 == x)
            .ok_or_else(|| Error::invalid(format!("a control message of unknown kind {x}")))
    }
}

/// A command, decoded.
#[derive(Debug)]
pub(crate) struct Command {
    /// What to do.
    pub op: Op,
    /// Its argument (a step or a round).
    pub arg: u64,
    /// For [`Op::Step`]: the loss scale of the step (1 without loss scaling).
    pub loss_scale: f32,
    /// Layer states, for [`Op::Restore`].
    pub states: Vec<(String, Vec<u64>)>,
    /// Parameters' values by name, for [`Op::Fixed`].
    pub values: Vec<(String, Vec<f32>)>,
}

/// How a command went, in a report's `slice`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Done; for [`Op::Metrics`], the metrics.
    Done(Vec<(String, f64)>),
    /// Failed with this error.
    Failed(String),
    /// Failed because another worker or server stopped first: a consequence, not a cause.
    Interrupted(String),
}

/// A report, decoded.
#[derive(Debug)]
pub(crate) struct Report {
    /// Who reports.
    pub from: Addr,
    /// The command it answers.
    pub op: Op,
    /// How it went.
    pub outcome: Outcome,
}

/// The command `op(arg)` from `src` to `dst`, with `states` for [`Op::Restore`] (encoded on
/// `dev`).
pub(crate) fn command(
    src: Addr,
    dst: Addr,
    op: Op,
    arg: u64,
    states: &[(String, Vec<u64>)],
    dev: &DeviceRef,
) -> Result<Msg> {
    let payload = match op {
        Op::Restore => Some(bytes_tensor(dev, &encode_states(states))?),
        _ => None,
    };
    Ok(Msg {
        src,
        dst,
        kind: MsgKind::Control,
        target: op as u32,
        slice: 0,
        version: arg,
        payload: payload.into(),
    })
}

/// The command to set the fixed parameters named in `values` to the values given there.
pub(crate) fn fixed_command(
    src: Addr,
    dst: Addr,
    values: &[(String, Vec<f32>)],
    dev: &DeviceRef,
) -> Result<Msg> {
    Ok(Msg {
        src,
        dst,
        kind: MsgKind::Control,
        target: Op::Fixed as u32,
        slice: 0,
        version: 0,
        payload: Some(bytes_tensor(dev, &encode_values(values))?).into(),
    })
}

/// The command to train step `step` with the loss scaled by `loss_scale` (its bits in the
/// message's `slice`).
pub(crate) fn step_command(src: Addr, dst: Addr, step: u64, loss_scale: f32) -> Msg {
    Msg {
        src,
        dst,
        kind: MsgKind::Control,
        target: Op::Step as u32,
        slice: loss_scale.to_bits(),
        version: step,
        payload: None.into(),
    }
}

/// Decodes a command message.
pub(crate) fn decode_command(msg: &Msg) -> Result<Command> {
    let op = Op::from_u32(msg.target)?;
    let payload = msg.payload.as_ref().into_option();
    let states = match (payload, op) {
        (Some(t), Op::Restore) => decode_states(&t.to_vec::<u8>()?)?,
        _ => Vec::new(),
    };
    let values = match (payload, op) {
        (Some(t), Op::Fixed) => decode_values(&t.to_vec::<u8>()?)?,
        _ => Vec::new(),
    };
    // A scale of 0 (bits 0: a step command made by `command`) is no scale.
    let loss_scale = match f32::from_bits(msg.slice) {
        s if op == Op::Step && s > 0.0 => s,
        _ => 1.0,
    };
    Ok(Command {
        op,
        arg: msg.version,
        loss_scale,
        states,
        values,
    })
}

/// The report of `from` on the command `op(arg)`; metrics and errors are encoded on `dev`.
pub(crate) fn report(
    from: Addr,
    op: Op,
    arg: u64,
    outcome: &Outcome,
    dev: &DeviceRef,
) -> Result<Msg> {
    let (code, bytes) = match outcome {
        Outcome::Done(m) if m.is_empty() => (0, None),
        Outcome::Done(m) => (0, Some(encode_metrics(m))),
        Outcome::Failed(e) => (1, Some(e.as_bytes().to_vec())),
        Outcome::Interrupted(e) => (2, Some(e.as_bytes().to_vec())),
    };
    let payload = bytes.map(|b| bytes_tensor(dev, &b)).transpose()?;
    Ok(Msg {
        src: from,
        dst: super::topology::COORDINATOR,
        kind: MsgKind::Report,
        target: op as u32,
        slice: code,
        version: arg,
        payload: payload.into(),
    })
}

/// Decodes a report message.
pub(crate) fn decode_report(msg: &Msg) -> Result<Report> {
    let op = Op::from_u32(msg.target)?;
    let bytes = match msg.payload.as_ref().into_option() {
        Some(t) => t.to_vec::<u8>()?,
        None => Vec::new(),
    };
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    let outcome = match msg.slice {
        0 if bytes.is_empty() => Outcome::Done(Vec::new()),
        0 => Outcome::Done(decode_metrics(&bytes)?),
        1 => Outcome::Failed(text()),
        2 => Outcome::Interrupted(text()),
        other => {
            return Err(Error::invalid(format!(
                "a report from {} with unknown outcome {other}",
                msg.src
            )))
        }
    };
    Ok(Report {
        from: msg.src,
        op,
        outcome,
    })
}

fn bytes_tensor(dev: &DeviceRef, bytes: &[u8]) -> Result<Tensor> {
    let mut t = Tensor::zeros(dev, [bytes.len().max(1)], DType::U8)?;
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().max(1), 0);
    t.write_from(&padded)?;
    Ok(t)
}

/// Reads what [`Writer`] wrote.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Error::invalid("a control message is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn encode_metrics(m: &[(String, f64)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, m.len() as u64);
    for (name, v) in m {
        put_string(&mut out, name);
        put_u64(&mut out, v.to_bits());
    }
    out
}

fn decode_metrics(b: &[u8]) -> Result<Vec<(String, f64)>> {
    let mut r = Reader(b);
    (0..r.u64()?)
        .map(|_| Ok((r.string()?, f64::from_bits(r.u64()?))))
        .collect()
}

fn encode_states(states: &[(String, Vec<u64>)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, states.len() as u64);
    for (name, s) in states {
        put_string(&mut out, name);
        put_u64(&mut out, s.len() as u64);
        for &x in s {
            put_u64(&mut out, x);
        }
    }
    out
}

fn decode_states(b: &[u8]) -> Result<Vec<(String, Vec<u64>)>> {
    let mut r = Reader(b);
    (0..r.u64()?)
        .map(|_| {
            let name = r.string()?;
            let s = (0..r.u64()?).map(|_| r.u64()).collect::<Result<_>>()?;
            Ok((name, s))
        })
        .collect()
}

fn encode_values(values: &[(String, Vec<f32>)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, values.len() as u64);
    for (name, v) in values {
        put_string(&mut out, name);
        put_u64(&mut out, v.len() as u64);
        for &x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn decode_values(b: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    let mut r = Reader(b);
    (0..r.u64()?)
        .map(|_| {
            let name = r.string()?;
            let n = r.u64()? as usize;
            let bytes = r.take(
                n.checked_mul(4)
                    .ok_or_else(|| Error::invalid("a control message is cut short"))?,
            )?;
            let v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Ok((name, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::{control_addr, worker_addr, COORDINATOR};

    #[test]
    fn commands_and_reports_round_trip() {
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let w = worker_addr(1, 2);
        let states = vec![
            ("data".to_string(), vec![7, u64::MAX]),
            ("x".into(), vec![]),
        ];
        let msg = command(COORDINATOR, control_addr(w), Op::Restore, 3, &states, &dev).unwrap();
        let c = decode_command(&msg).unwrap();
        assert_eq!((c.op, c.arg, c.states), (Op::Restore, 3, states));
        let values = vec![
            ("fc1/weight".to_string(), vec![1.5, -0.0, f32::MAX]),
            ("b".into(), vec![]),
        ];
        let msg = fixed_command(COORDINATOR, control_addr(w), &values, &dev).unwrap();
        let c = decode_command(&msg).unwrap();
        assert_eq!((c.op, c.values), (Op::Fixed, values));
        let step = command(COORDINATOR, control_addr(w), Op::Step, 9, &[], &dev).unwrap();
        assert!(step.payload.is_none(), "a step carries nothing");
        for outcome in [
            Outcome::Done(Vec::new()),
            Outcome::Done(vec![("loss".into(), 0.25), ("accuracy".into(), f64::NAN)]),
            Outcome::Failed("worker 1.2: broke".into()),
            Outcome::Interrupted("server 0.0 stopped".into()),
        ] {
            let msg = report(w, Op::Metrics, 4, &outcome, &dev).unwrap();
            let r = decode_report(&msg).unwrap();
            assert_eq!((r.from, r.op, msg.version), (w, Op::Metrics, 4));
            match (&r.outcome, &outcome) {
                (Outcome::Done(a), Outcome::Done(b)) => {
                    assert_eq!(a.len(), b.len());
                    for ((n, x), (m, y)) in a.iter().zip(b) {
                        assert!(n == m && (x == y || x.is_nan() && y.is_nan()));
                    }
                }
                (a, b) => assert_eq!(a, b),
            }
        }
        let mut bad = report(w, Op::Step, 0, &Outcome::Done(Vec::new()), &dev).unwrap();
        bad.target = 99;
        assert!(decode_report(&bad).is_err());
    }
}
