//! How parameters are cut into slices over the servers of a group.

/// Values `offset .. offset + len` of parameter `param`, held by server `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The parameter (its index in the parameter store).
    pub param: usize,
    /// The slice's number within its parameter.
    pub index: u32,
    /// The first value.
    pub offset: usize,
    /// The number of values.
    pub len: usize,
    /// The server (within its group) that updates it.
    pub server: usize,
}

/// Parameters smaller than this many values per server are not cut: one server holds each.
pub const MIN_SLICE: usize = 2048;

/// The servers (of a group) that hold at least one of `slices`, in order; the first leads the
/// exchange of each step's global norm.
pub(crate) fn holders(slices: &[Vec<Slice>]) -> Vec<usize> {
    let mut holders: Vec<usize> = slices.iter().flatten().map(|sl| sl.server).collect();
    holders.sort_unstable();
    holders.dedup();
    holders
}

/// Cuts parameters of `sizes` values over `servers` servers so that each server holds about
/// the same number of values: a large parameter is cut into `servers` nearly equal slices, one
/// per server, so that the servers update it in parallel when its gradient comes in; a small
/// one (under [`MIN_SLICE`] values a server) goes whole to the server holding the fewest
/// values so far. A size of 0 (a parameter no server updates) gets no slices. Returns the
/// slices of each parameter.
pub fn slice_params(sizes: &[usize], servers: usize) -> Vec<Vec<Slice>> {
    let servers = servers.max(1);
    let mut load = vec![0usize; servers];
    sizes
        .iter()
        .enumerate()
        .map(|(param, &n)| {
            if n == 0 {
                return Vec::new();
            }
            if n < MIN_SLICE * servers {
                let server = (0..servers).min_by_key(|&s| load[s]).expect("at least one");
                load[server] += n;
                return vec![Slice {
                    param,
                    index: 0,
                    offset: 0,
                    len: n,
                    server,
                }];
            }
            (0..servers)
                .map(|s| {
                    let (start, end) = (s * n / servers, (s + 1) * n / servers);
                    load[s] += end - start;
                    Slice {
                        param,
                        index: s as u32,
                        offset: start,
                        len: end - start,
                        server: s,
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn large_parameters_are_cut_evenly_and_small_ones_balance_the_load() {
        let s = slice_params(&[10_000, 0, 10, 6], 2);
        assert_eq!(
            s[0],
            vec![
                Slice {
                    param: 0,
                    index: 0,
                    offset: 0,
                    len: 5000,
                    server: 0
                },
                Slice {
                    param: 0,
                    index: 1,
                    offset: 5000,
                    len: 5000,
                    server: 1
                },
            ]
        );
        assert!(s[1].is_empty());
        assert_eq!(
            s[2],
            vec![Slice {
                param: 2,
                index: 0,
                offset: 0,
                len: 10,
                server: 0
            }]
        );
        assert_eq!(
            s[3],
            vec![Slice {
                param: 3,
                index: 0,
                offset: 0,
                len: 6,
                server: 1
            }]
        );
    }

    proptest! {
        #[test]
        fn every_value_has_one_server_and_the_loads_are_even(
            sizes in proptest::collection::vec(prop_oneof![0usize..300, 0usize..40_000], 1..12),
            servers in 1usize..9,
        ) {
            let slices = slice_params(&sizes, servers);
            let mut load = vec![0usize; servers];
            for (p, (s, &n)) in slices.iter().zip(&sizes).enumerate() {
                let mut next = 0;
                for (i, sl) in s.iter().enumerate() {
                    prop_assert_eq!((sl.param, sl.index as usize, sl.offset), (p, i, next));
                    prop_assert!(sl.len > 0 && sl.server < servers);
                    next += sl.len;
                    load[sl.server] += sl.len;
                }
                prop_assert_eq!(next, n);
            }
            // Even up to one small parameter, and up to one value per cut parameter.
            let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
            prop_assert!(hi - lo <= MIN_SLICE * servers + sizes.len(), "loads {load:?}");
        }
    }
}
