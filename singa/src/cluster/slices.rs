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

/// Cuts parameters of `sizes` values over `servers` servers so that each server holds
/// `⌊N / servers⌋` or `⌈N / servers⌉` values (`N` the total): the parameters are laid end to
/// end and cut where one server's share ends, so a parameter is cut only there. A size of 0
/// (a parameter no server updates) gets no slices. Returns the slices of each parameter.
pub fn slice_params(sizes: &[usize], servers: usize) -> Vec<Vec<Slice>> {
    let servers = servers.max(1);
    let total: usize = sizes.iter().sum();
    // Server s holds the values from share_start(s) up to share_start(s + 1).
    let share_start = |s: usize| (s as u128 * total as u128 / servers as u128) as usize;
    let mut server = 0;
    let mut start = 0;
    sizes
        .iter()
        .enumerate()
        .map(|(param, &n)| {
            let mut slices = Vec::new();
            let (mut pos, end) = (start, start + n);
            while pos < end {
                while pos >= share_start(server + 1) {
                    server += 1;
                }
                let stop = end.min(share_start(server + 1));
                slices.push(Slice {
                    param,
                    index: slices.len() as u32,
                    offset: pos - start,
                    len: stop - pos,
                    server,
                });
                pos = stop;
            }
            start = end;
            slices
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_large_parameter_is_cut_where_a_share_ends() {
        let s = slice_params(&[6, 0, 2], 2);
        assert_eq!(
            s[0],
            vec![
                Slice {
                    param: 0,
                    index: 0,
                    offset: 0,
                    len: 4,
                    server: 0
                },
                Slice {
                    param: 0,
                    index: 1,
                    offset: 4,
                    len: 2,
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
                len: 2,
                server: 1
            }]
        );
    }

    proptest! {
        #[test]
        fn every_value_has_one_server_and_the_loads_are_even(
            sizes in proptest::collection::vec(0usize..300, 1..12),
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
            let total: usize = sizes.iter().sum();
            for l in load {
                prop_assert!(l == total / servers || l == total.div_ceil(servers), "{l} of {total}");
            }
        }
    }
}
