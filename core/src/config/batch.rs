//! One plan for a request made of several calls: an MCP JSON-RPC batch whose calls name different
//! tools (the gateway plugin and the Envoy filter group the calls by tool; each group is one
//! call here, its cost the number of calls).
//!
//! [`Policy::plan_batch`] plans every call with [`Policy::plan`] and merges the plans into one,
//! so a store decides the whole request with one atomic check (one lock set, one Redis script
//! call): all-or-nothing across every call's cells.
//!
//! # Merging
//!
//! Cells with the same key (the user's cell, a tenant's, a descriptor's: shared by every call)
//! become one cell whose cost is the sum of the calls' costs. Within one policy a key determines
//! its limit, algorithm and shadow flag, so nothing else differs between such cells. Every
//! algorithm treats `peek(c1); commit(c1); peek(c2)` at one instant like `peek(c1 + c2)` (their
//! usage is additive in the cost at a fixed `now`), so the merged plan admits exactly when the
//! calls one after another would all be admitted at that instant, and consumes the same units.
//! The merged cells are stably sorted by [`DimensionKind`] so the plan keeps the tie-break order
//! of [`Policy::plan`] (user, user_per_server, tenant, tool, descriptors).
//!
//! ```
//! use ratewall_core::config::{BatchCall, LimiterConfig};
//! let (cfg, _) = LimiterConfig::from_yaml_str("by_user: 10/m\nby_tool:\n  echo: 2/m\n", &[]).unwrap();
//! let calls = [BatchCall { tool: Some("add"), cost: 1 }, BatchCall { tool: Some("echo"), cost: 2 }];
//! let batch = cfg.policy.plan_batch(Some("alice"), None, None, &[], &calls).unwrap();
//! assert_eq!(batch.plan.cells.len(), 2); // the user's cell once, the echo tool's cell
//! assert_eq!(batch.plan.cells[0].cost, 3); // 1 + 2
//! assert_eq!(batch.plan.cost, 3);
//! assert_eq!(batch.calls, vec![vec![0], vec![0, 1]]);
//! ```

use super::compile::{ContextError, Plan, Policy, RequestContext};
use super::rate::MAX_COUNT;

/// Most calls one batch may carry (packagings group an MCP batch's calls by tool: this bounds
/// the distinct tools, and so the cells, of one request).
pub const MAX_BATCH_CALLS: usize = 32;

/// One call of a batch: its tool (absent: not a tool call, so `by_user_per_server` does not
/// apply) and its cost (0 is treated as 1, as in [`Policy::plan`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCall<'a> {
    /// Tool or prompt name (normalised by the policy).
    pub tool: Option<&'a str>,
    /// Units the call consumes.
    pub cost: u64,
}

/// The merged plan of a batch and which of its cells each call touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// One plan for the whole request; `plan.cost` is the sum of the calls' costs.
    pub plan: Plan,
    /// For call `i`, the indexes into `plan.cells` (and so into the decision's dimensions) of
    /// its cells, ascending.
    pub calls: Vec<Vec<usize>>,
}

/// A batch that cannot be planned. Nothing is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// No call, or more than [`MAX_BATCH_CALLS`].
    Count(usize),
    /// Call `index` cannot be evaluated (for [`ContextError::CostTooLarge`]: the sum of the costs
    /// up to this call on one cell is above the largest count).
    Call(usize, ContextError),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Count(n) => write!(
                f,
                "a batch carries 1 to {MAX_BATCH_CALLS} calls, this one {n}"
            ),
            BatchError::Call(i, e) => write!(f, "call {i}: {e}"),
        }
    }
}

impl std::error::Error for BatchError {}

impl Policy {
    /// The one plan of a request made of `calls` that share an identity (see the module doc):
    /// `by_user_per_server` applies to the calls with a tool, when `server` is given.
    pub fn plan_batch(
        &self,
        user: Option<&str>,
        tenant: Option<&str>,
        server: Option<&str>,
        descriptors: &[(&str, &str)],
        calls: &[BatchCall<'_>],
    ) -> Result<BatchPlan, BatchError> {
        if calls.is_empty() || calls.len() > MAX_BATCH_CALLS {
            return Err(BatchError::Count(calls.len()));
        }
        let mut plan = Plan {
            cells: Vec::new(),
            cost: 0,
        };
        let mut touched: Vec<Vec<usize>> = Vec::with_capacity(calls.len());
        for (i, call) in calls.iter().enumerate() {
            let p = self
                .plan(&RequestContext {
                    user,
                    tenant,
                    server,
                    per_server: call.tool.is_some() && server.is_some(),
                    tool: call.tool,
                    descriptors,
                    cost: call.cost,
                })
                .map_err(|e| BatchError::Call(i, e))?;
            // Bounded: at most MAX_BATCH_CALLS costs of at most MAX_COUNT each.
            plan.cost += p.cost;
            let mut mine = Vec::with_capacity(p.cells.len());
            for cell in p.cells {
                match plan.cells.iter().position(|c| c.key == cell.key) {
                    Some(j) => {
                        let cost = plan.cells[j].cost + cell.cost;
                        if cost > MAX_COUNT {
                            return Err(BatchError::Call(i, ContextError::CostTooLarge(cost)));
                        }
                        plan.cells[j].cost = cost;
                        mine.push(j);
                    }
                    None => {
                        plan.cells.push(cell);
                        mine.push(plan.cells.len() - 1);
                    }
                }
            }
            touched.push(mine);
        }
        // Tie-break order: a stable sort by dimension kind, then the calls' indexes remapped.
        let mut order: Vec<usize> = (0..plan.cells.len()).collect();
        order.sort_by_key(|&j| plan.cells[j].dimension);
        let mut new_index = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut cells: Vec<Option<_>> = plan.cells.into_iter().map(Some).collect();
        plan.cells = order.iter().filter_map(|&old| cells[old].take()).collect();
        let calls = touched
            .into_iter()
            .map(|mine| {
                let mut v: Vec<usize> = mine.into_iter().map(|j| new_index[j]).collect();
                v.sort_unstable();
                v
            })
            .collect();
        Ok(BatchPlan { plan, calls })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::{DimensionKind, LimiterConfig};

    fn policy(yaml: &str) -> Policy {
        LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0.policy
    }

    fn call(tool: &str, cost: u64) -> BatchCall<'_> {
        BatchCall {
            tool: Some(tool),
            cost,
        }
    }

    #[test]
    fn shared_cells_sum_their_costs_and_keep_tie_break_order() {
        let p = policy(
            "by_user: 10/m\nby_tenant: 100/m\nby_user_per_server: 5/m\nby_tool:\n  echo: 2/m\n  add: 4/m\nlimits:\n  - name: per_key\n    descriptors: [api_key]\n    rate: 7/m\n",
        );
        let d = [("api_key", "k1")];
        let calls = [
            BatchCall {
                tool: None,
                cost: 1,
            },
            call("Echo", 2),
            call("add", 1),
        ];
        let b = p
            .plan_batch(Some("alice"), Some("acme"), Some("gw"), &d, &calls)
            .unwrap();
        let kinds: Vec<_> = b.plan.cells.iter().map(|c| c.dimension).collect();
        use DimensionKind::*;
        assert_eq!(
            kinds,
            vec![User, UserPerServer, Tenant, Tool, Tool, Descriptor]
        );
        let costs: Vec<_> = b.plan.cells.iter().map(|c| c.cost).collect();
        // user 1+2+1, per-server only for tool calls 2+1, tenant 4, echo 2, add 1, descriptor 4
        assert_eq!(costs, vec![4, 3, 4, 2, 1, 4]);
        assert_eq!(b.plan.cost, 4);
        assert_eq!(b.plan.cells[3].name.as_str(), "tool:echo");
        assert_eq!(
            b.calls,
            vec![vec![0, 2, 5], vec![0, 1, 2, 3, 5], vec![0, 1, 2, 4, 5]]
        );
        // the keys are those of the single plans: one request through either path, one counter
        let single = p
            .plan(&RequestContext {
                user: Some("alice"),
                tenant: Some("acme"),
                server: Some("gw"),
                per_server: true,
                tool: Some("echo"),
                descriptors: &d,
                cost: 1,
            })
            .unwrap();
        for c in &single.cells {
            assert!(b.plan.cells.iter().any(|m| m.key == c.key), "{}", c.key);
        }
    }

    #[test]
    fn one_call_is_the_single_plan() {
        let p = policy("by_user: 10/m\nby_tool:\n  echo: 2/m\n");
        let b = p
            .plan_batch(Some("bob"), None, None, &[], &[call("echo", 2)])
            .unwrap();
        let single = p
            .plan(&RequestContext {
                user: Some("bob"),
                tool: Some("echo"),
                cost: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(b.plan, single);
        assert_eq!(b.calls, vec![vec![0, 1]]);
    }

    #[test]
    fn bad_batches_name_the_call() {
        let p = policy("by_user: 10/m\nby_user_per_server: 5/m\n");
        assert_eq!(
            p.plan_batch(None, None, None, &[], &[]),
            Err(BatchError::Count(0))
        );
        let many = vec![call("t", 1); MAX_BATCH_CALLS + 1];
        assert_eq!(
            p.plan_batch(None, None, None, &[], &many),
            Err(BatchError::Count(33))
        );
        let e = p
            .plan_batch(
                None,
                None,
                Some("bad id"),
                &[],
                &[call("a", 1), call("b", 1)],
            )
            .unwrap_err();
        assert_eq!(e, BatchError::Call(0, ContextError::ServerIdInvalid));
        let e = p
            .plan_batch(None, None, None, &[], &[call("a", MAX_COUNT), call("b", 1)])
            .unwrap_err();
        assert_eq!(
            e,
            BatchError::Call(1, ContextError::CostTooLarge(MAX_COUNT + 1))
        );
        assert_eq!(
            e.to_string(),
            "call 1: cost 4294967296 exceeds the maximum of 4294967295"
        );
    }

    /// The merge's premise: at one instant, `peek(c1); commit(c1); peek(c2)` admits and consumes
    /// exactly as `peek(c1 + c2)`, for every algorithm, usage and pair of costs.
    #[test]
    fn costs_are_additive_at_one_instant() {
        use crate::algorithm::Algorithm;
        use crate::config::rate::Limit;
        let limit = Limit::new(5, 10).unwrap();
        let t0 = 1_700_000_000_000_000;
        for alg in Algorithm::ALL {
            for used in 0..=5u64 {
                for gap in [0, 1_000, 3_000_000, 9_999_999] {
                    let mut s = alg.fresh_state();
                    for k in 0..used {
                        if s.peek(t0 + k, 1, &limit).allowed {
                            s.commit(t0 + k, 1, &limit);
                        }
                    }
                    let now = t0 + used + gap;
                    for c1 in 1..=6u64 {
                        for c2 in 1..=6u64 {
                            let merged = s.peek(now, c1 + c2, &limit);
                            let mut seq = s.clone();
                            let first = seq.peek(now, c1, &limit);
                            let both = first.allowed && {
                                seq.commit(now, c1, &limit);
                                seq.peek(now, c2, &limit).allowed
                            };
                            let ctx = format!("{alg:?} used {used} gap {gap} costs {c1}+{c2}");
                            assert_eq!(merged.allowed, both, "{ctx}");
                            if both {
                                let second = seq.peek(now, c2, &limit);
                                assert_eq!(merged.remaining, second.remaining, "{ctx}");
                                let mut one = s.clone();
                                one.commit(now, c1 + c2, &limit);
                                seq.commit(now, c2, &limit);
                                assert_eq!(
                                    one.peek(now, 1, &limit),
                                    seq.peek(now, 1, &limit),
                                    "{ctx}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
