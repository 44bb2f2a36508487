//! The processes of a job (`cluster.nprocs`): where each worker and server lives, and the rounds
//! of `Put`s and `Get`s that bring their separate copies of the values in line.

use super::{Cluster, Command, Peer};
use crate::config::ClusterConfig;
use singa_comm::{ChannelEndpoint, ChannelNetwork, ProcessNetwork};
use singa_core::{Addr, Result, Role};
use std::collections::HashMap;

impl Cluster {
    /// With separate memory: a round of `Put`s of worker 0's values to every server group
    /// (when `put`), then of `Get`s by every worker (of group `only`, if given), which install
    /// the values their servers hold. A `Get` names the last round of `Put`s, which its server
    /// must have installed before it answers.
    pub(super) fn refresh(&mut self, put: bool, only: Option<u32>) -> Result<()> {
        // Nothing of a step may be in flight: its replies share the queues.
        self.drain()?;
        let takes_part = |p: &Peer| only.is_none_or(|g| p.addr.group == g);
        if put {
            self.put_round += 1;
            let own = self.link.put_all(self.put_round, &self.server_groups);
            self.own_outcome(own)?;
        }
        let round = self.put_round;
        for p in self.peers.iter().filter(|p| takes_part(p)) {
            if !p.send(Command::Refresh(round)) {
                return Err(self.stopped(p.addr));
            }
        }
        let own = self.link.get_all(round);
        let own = self.own_outcome(own);
        let peers = self.collect_from(takes_part, |_| {});
        own?;
        peers
    }

    /// Messages and payload bytes that went from one of the job's processes to another so far,
    /// parameter traffic and bridges together (none when it has one process).
    pub fn traffic_between_processes(&self) -> (u64, u64) {
        let params = self
            .processes
            .as_ref()
            .map_or((0, 0), ProcessNetwork::traffic);
        let bridges = self.exchanges.traffic_between_processes();
        (params.0 + bridges.0, params.1 + bridges.1)
    }
}

/// The endpoints of `addrs`: in one network, or spread over the job's processes (workers in
/// order, servers as [`ClusterConfig::process_of_server`] says) with a router each.
pub(super) fn connect(
    c: &ClusterConfig,
    addrs: &[Addr],
) -> Result<(Option<ProcessNetwork>, HashMap<Addr, ChannelEndpoint>)> {
    if !c.separate_memory() {
        let ends = ChannelNetwork::connect(addrs)?;
        return Ok((None, addrs.iter().copied().zip(ends).collect()));
    }
    let mut placement = vec![Vec::new(); c.nprocs];
    for &a in addrs {
        let p = match a.role {
            Role::Worker => {
                c.process_of_worker(a.group as usize * c.nworkers_per_group + a.id as usize)
            }
            _ => c.process_of_server(a.group as usize, a.id as usize),
        };
        placement[p].push(a);
    }
    let (net, ends) = ProcessNetwork::connect(&placement)?;
    let ends = placement
        .into_iter()
        .flatten()
        .zip(ends.into_iter().flatten());
    Ok((Some(net), ends.collect()))
}
