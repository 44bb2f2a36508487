//! Where a job's workers and servers live, computed once from its `[cluster]` section and the
//! number of ranks (processes): which rank holds which workers and servers, where each server
//! receives its messages, which server group serves which worker group, and every address the
//! ranks' fabric must connect. `--dry-run` prints it.

use super::slices::Slice;
use crate::config::ClusterConfig;
pub use crate::partition::bridge::bridge_addr;
use singa_core::{Addr, Role};

/// The placement of a job's workers and servers over its ranks.
#[derive(Clone, Debug)]
pub struct Topology {
    cluster: ClusterConfig,
    ranks: usize,
}

/// The address of worker `id` of group `group` (where its parameter traffic goes).
pub fn worker_addr(group: u32, id: u32) -> Addr {
    Addr {
        group,
        id,
        role: Role::Worker,
    }
}

/// The address of server `id` of server group `group`, when it has a thread of its own.
pub fn server_addr(group: u32, id: u32) -> Addr {
    Addr {
        group,
        id,
        role: Role::Server,
    }
}

/// Where `worker` takes commands from the coordinator.
pub fn control_addr(worker: Addr) -> Addr {
    Addr {
        role: Role::Control,
        ..worker
    }
}

/// The coordinator's address (worker 0.0's control endpoint: the coordinator runs it), where
/// every report goes.
pub const COORDINATOR: Addr = Addr {
    group: 0,
    id: 0,
    role: Role::Control,
};

/// The address rank `rank` reports from before its workers run.
pub fn node_addr(rank: usize) -> Addr {
    Addr {
        group: 0,
        id: rank as u32,
        role: Role::Node,
    }
}

impl Topology {
    /// The placement of `cluster`'s workers and servers over `ranks` ranks (a validated
    /// cluster whose workers divide evenly over them).
    pub fn new(cluster: &ClusterConfig, ranks: usize) -> Topology {
        Topology {
            cluster: ClusterConfig {
                nprocs: ranks.max(1),
                ..cluster.clone()
            },
            ranks: ranks.max(1),
        }
    }

    /// The cluster section it was computed from (with `nprocs` the number of ranks).
    pub fn cluster(&self) -> &ClusterConfig {
        &self.cluster
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Whether workers and servers live in several ranks, which share no memory: every worker
    /// then has its own copy of the values and every server its own slices (an AllReduce
    /// server's are views of the values of the worker beside it).
    pub fn separate_memory(&self) -> bool {
        self.ranks > 1
    }

    /// Whether each server runs on the thread of the worker it sits beside (AllReduce, and
    /// Hogwild's groups); it then receives at that worker's address, and serves while its
    /// worker waits.
    pub fn servers_on_worker_threads(&self) -> bool {
        self.cluster.servers_beside_workers()
    }

    /// Every worker, group after group.
    pub fn workers(&self) -> impl Iterator<Item = Addr> + '_ {
        let c = &self.cluster;
        (0..c.nworker_groups as u32)
            .flat_map(move |g| (0..c.nworkers_per_group as u32).map(move |i| worker_addr(g, i)))
    }

    /// The workers of group `g`, in order.
    pub fn group(&self, g: usize) -> Vec<Addr> {
        (0..self.cluster.nworkers_per_group as u32)
            .map(|i| worker_addr(g as u32, i))
            .collect()
    }

    /// The position of `worker` among all workers, group after group.
    pub fn worker_index(&self, worker: Addr) -> usize {
        worker.group as usize * self.cluster.nworkers_per_group + worker.id as usize
    }

    /// The rank that holds `worker`: workers go to ranks in order, an equal number each.
    pub fn rank_of_worker(&self, worker: Addr) -> usize {
        self.worker_index(worker) / (self.cluster.nworkers() / self.ranks).max(1)
    }

    /// The rank that holds server `s` of server group `h`: its worker's when servers sit beside
    /// workers, otherwise servers are spread in order over the ranks.
    pub fn rank_of_server(&self, h: usize, s: usize) -> usize {
        let c = &self.cluster;
        if c.servers_beside_workers() {
            return self.rank_of_worker(worker_addr(h as u32, s as u32));
        }
        let total = c.nserver_groups * c.nservers_per_group;
        (h * c.nservers_per_group + s) * self.ranks / total
    }

    /// Where server `s` of server group `h` receives its messages.
    pub fn server_at(&self, h: usize, s: usize) -> Addr {
        match self.servers_on_worker_threads() {
            true => worker_addr(h as u32, s as u32),
            false => server_addr(h as u32, s as u32),
        }
    }

    /// The servers of server group `h`, where they receive.
    pub fn server_group(&self, h: usize) -> Vec<Addr> {
        (0..self.cluster.nservers_per_group)
            .map(|s| self.server_at(h, s))
            .collect()
    }

    /// Every server group's servers.
    pub fn server_groups(&self) -> Vec<Vec<Addr>> {
        (0..self.cluster.nserver_groups)
            .map(|h| self.server_group(h))
            .collect()
    }

    /// The server group that serves worker group `g`: the one server group, or its own
    /// (Hogwild).
    pub fn server_group_of(&self, g: usize) -> usize {
        if self.cluster.nserver_groups == 1 {
            0
        } else {
            g
        }
    }

    /// The worker groups server group `h` serves.
    pub fn served_by(&self, h: usize) -> Vec<usize> {
        match self.cluster.nserver_groups {
            1 => (0..self.cluster.nworker_groups).collect(),
            _ => vec![h],
        }
    }

    /// Every server as (server group, index in it), group after group.
    pub fn servers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let c = &self.cluster;
        (0..c.nserver_groups).flat_map(move |h| (0..c.nservers_per_group).map(move |s| (h, s)))
    }

    /// The workers of rank `rank`, in order.
    pub fn rank_workers(&self, rank: usize) -> Vec<Addr> {
        self.workers()
            .filter(|&w| self.rank_of_worker(w) == rank)
            .collect()
    }

    /// The servers of rank `rank`, as (server group, index in it).
    pub fn rank_servers(&self, rank: usize) -> Vec<(usize, usize)> {
        self.servers()
            .filter(|&(h, s)| self.rank_of_server(h, s) == rank)
            .collect()
    }

    /// Whether the workers of a group have bridge endpoints (groups of several workers).
    fn bridges(&self) -> bool {
        self.cluster.nworkers_per_group > 1
    }

    /// Every address rank `rank` holds: its workers' (parameters, commands, bridges), its
    /// servers' when they have threads of their own, and its own.
    pub fn rank_addrs(&self, rank: usize) -> Vec<Addr> {
        let mut addrs = vec![node_addr(rank)];
        for w in self.rank_workers(rank) {
            addrs.push(w);
            addrs.push(control_addr(w));
            if self.bridges() {
                addrs.push(bridge_addr(w.group, w.id));
            }
        }
        if !self.servers_on_worker_threads() {
            for (h, s) in self.rank_servers(rank) {
                addrs.push(server_addr(h as u32, s as u32));
            }
        }
        addrs
    }

    /// Every rank's addresses, for the fabric.
    pub fn placement(&self) -> Vec<Vec<Addr>> {
        (0..self.ranks).map(|r| self.rank_addrs(r)).collect()
    }

    /// The ranks and what each holds (with the slices each server updates, named by
    /// parameter), for `--dry-run`.
    pub fn describe_ranks(&self, slices: &[Vec<Slice>], names: &[String]) -> String {
        let mut out = String::new();
        for r in 0..self.ranks {
            let workers: Vec<String> = self
                .rank_workers(r)
                .iter()
                .map(|&w| match self.cluster.gpu_of(self.worker_index(w)) {
                    Some(gpu) => format!("worker {}.{} (GPU {gpu})", w.group, w.id),
                    None => format!("worker {}.{}", w.group, w.id),
                })
                .collect();
            let servers: Vec<String> = self
                .rank_servers(r)
                .into_iter()
                .map(|(h, s)| {
                    let held: Vec<String> = slices
                        .iter()
                        .flatten()
                        .filter(|sl| sl.server == s)
                        .map(|sl| {
                            let name = names.get(sl.param).map_or("?", String::as_str);
                            match slices[sl.param].len() {
                                1 => name.to_string(),
                                _ => format!("{name}[{}..{}]", sl.offset, sl.offset + sl.len),
                            }
                        })
                        .collect();
                    format!("server {h}.{s} ({})", held.join(", "))
                })
                .collect();
            let what: Vec<String> = workers.into_iter().chain(servers).collect();
            out.push_str(&format!("  rank {r}: {}\n", what.join("; ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Framework;

    #[test]
    fn dry_runs_name_each_workers_gpu() {
        let cluster = ClusterConfig {
            gpus: vec![2, 3],
            ..Framework::AllReduce.preset(2)
        };
        let slices = crate::cluster::slices::slice_params(&[10], 2);
        let text = Topology::new(&cluster, 2).describe_ranks(&slices, &["w".into()]);
        assert!(
            text.contains("rank 0: worker 0.0 (GPU 2); server 0.0 (w)"),
            "{text}"
        );
        assert!(
            text.contains("rank 1: worker 0.1 (GPU 3); server 0.1"),
            "{text}"
        );
    }

    #[test]
    fn every_address_lives_in_one_rank_and_servers_follow_their_workers() {
        let t = Topology::new(&Framework::AllReduce.preset(4), 2);
        let placement = t.placement();
        let all: Vec<Addr> = placement.iter().flatten().copied().collect();
        let mut unique = all.clone();
        unique.sort_by_key(|a| (a.role as u8, a.group, a.id));
        unique.dedup();
        assert_eq!(all.len(), unique.len());
        assert_eq!(
            t.rank_workers(1),
            vec![worker_addr(0, 2), worker_addr(0, 3)]
        );
        assert_eq!(t.rank_servers(1), vec![(0, 2), (0, 3)]);
        assert!(placement[0].contains(&COORDINATOR));
        // Servers beside workers run on their threads, at their addresses.
        assert_eq!(t.server_at(0, 3), worker_addr(0, 3));
        assert!(!placement[1].contains(&server_addr(0, 3)));
        // Separate servers are spread in order.
        let sb = Topology::new(&Framework::Sandblaster.preset(2), 2);
        assert_eq!(sb.rank_servers(0), vec![(0, 0)]);
        assert!(sb.rank_servers(1).is_empty());
        let dp = Topology::new(&Framework::Downpour.preset(4), 2);
        assert_eq!(dp.served_by(0), vec![0, 1, 2, 3]);
        assert_eq!(dp.server_group_of(3), 0);
        let hw = Topology::new(&Framework::Hogwild.preset(4), 4);
        assert_eq!((hw.server_group_of(3), hw.rank_of_server(3, 0)), (3, 3));
    }
}
