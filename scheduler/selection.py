"""Which waiting jobs go to which free agent slot: the rules behind ``decide``.

Pure, like the rest of the core: :func:`plan` reads the policy state and
``now`` and returns picks; :func:`scheduler.policy.decide` turns them into
assignments. Per target:

1. **Classes and aging.** Waiting jobs form one class per priority; classes go
   by level, then by the age of their oldest job. A class's level is its
   priority, less one for every ``aging_s`` its oldest job has waited, and
   ``URGENT_AGING`` times slower below the default priority 5 (a nightly
   catches up with pull requests within hours; a pull-request backlog needs a
   working day to overtake releases). Never below 0, so nothing waits
   forever. FIFO within a class and org, run by run; within a run, longest
   estimated job first: a run is done when its last job is, so its long jobs
   (and a long job's retries) start first and the short ones even out its
   agents' finish.
2. **Affinity.** An agent whose build still has waiting work keeps it. It
   leaves only for a group of a better priority that nobody runs, or an urgent
   one (priority below ``urgent_below``) it would shorten enough (rule 4); for
   a class that has aged ``AGING_MARGIN`` levels past its own (bounded wait,
   without flip-flopping as classes age); or for an org at its level or better
   that holds none of the target's agents (fairness).
3. **Fairness.** Within a class, orgs holding fewer of the target's agents go
   first, then the org with the oldest job: one org's 10,000 jobs do not
   starve another org's 10.
4. **Placing a free agent.** Class by class: start a group nobody runs, else
   split a group that runs late, when the agent shortens it. Late: urgent, if
   the agent shortens it by ``URGENT_GAIN_INSTALLS`` install times (enough
   to pay for its install and the one back to other work: small urgent runs
   get a few agents, not all; one install less for an agent with no work of
   its own build, which installs whatever it takes); or finishing more than
   ``split_after_s`` from now (scaled down for priorities below the default),
   or more than ``split_slowdown`` times what it would take on the whole
   target. With none of that anywhere, an idle agent joins the run it
   shortens most if that saves ``spare_gain_installs`` install times.
   Installs and durations are estimated (:mod:`scheduler.estimates`); these
   rules count an install as its estimated duration, or ``install_value_s``
   (in proportion less below the default priority) where that is more, for
   farms where an install costs more than its time: a BrowserStack session, a
   device's wear, one more chance of a flaky install.
5. **Batch size.** About ``batch_s`` seconds of estimated work, at most
   ``max_batch`` jobs and at most the agent's even share of what is left of
   the group, so agents come back often to re-decide (priority and fairness
   act at batch boundaries, so more urgent work waits for the batches running
   when it arrives) and keep their build when they do. Jobs of a later class
   ride along only while no other group has more urgent work.
6. **Retries.** An agent with nothing of its build left to run but a retry
   due sooner than an install would take waits for it rather than installing
   another build: the retry (of a failed attempt in its own batch, usually) is
   then its next batch, without an install.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.policy import Agent, Config, Group, Job, State

DEFAULT_PRIORITY = 5  # the job model's default; priorities below it are urgent
AGING_MARGIN = 2  # levels a class must have aged past an agent's own class to take it away
URGENT_AGING = 8  # aging into the urgent band (below the default priority) is this many times slower
MIN_GAIN = 0.05  # a split must shorten the run's estimated finish by this fraction
URGENT_GAIN_INSTALLS = 3.0  # an agent joins an urgent run only if it shortens it by this many install times
INF = float("inf")
_by_order = attrgetter("order")


def class_level(priority: int, waited_s: float, aging_s: float) -> int:
    """A class's level: its priority, less one per ``aging_s`` its oldest job
    has waited, never below 0."""
    if aging_s <= 0:
        return priority
    steps = max(0.0, waited_s) / aging_s
    normal = max(0, priority - DEFAULT_PRIORITY)  # levels down to the default priority age at aging_s
    if steps <= normal:
        return priority - int(steps)
    urgent = (steps - normal) / URGENT_AGING
    return max(0, min(priority, DEFAULT_PRIORITY) - int(urgent))


@dataclass(slots=True)
class Candidate:
    """One group's ready jobs on its target, as one decide sees them."""

    group: Group
    jobs: list[Job]  # by (class rank, submission)
    ranks: list[int]
    estimates: list[float]
    work_s: float  # estimated work of ``jobs``
    first: int = 0  # submission order of its oldest waiting job
    servers: int = 0  # agent slots running the group now (or given it in this decide)
    inflight_s: float = 0.0  # estimated work left in their batches

    @property
    def rank(self) -> int:
        return self.ranks[0]

    @property
    def priority(self) -> int:
        return self.jobs[0].priority

    @property
    def org(self) -> str:
        return self.jobs[0].org_id

    def finish_s(self, install_s: float = 0.0, more: int = 0) -> float:
        """Estimated time to finish the group with ``more`` agents, each
        paying ``install_s`` first."""
        n = self.servers + more
        return (self.inflight_s + self.work_s + more * install_s) / n if n else float("inf")


@dataclass(slots=True)
class Target:
    """What one decide knows about one target."""

    name: str
    candidates: dict[Group, Candidate] = field(default_factory=dict)
    levels: dict[int, int] = field(default_factory=dict)  # priority -> class level now
    held: Counter[str] = field(default_factory=Counter)  # org -> agent slots running its work
    retries: dict[str, float] = field(default_factory=dict)  # build -> when its next retry not yet ready may run
    slots: int = 0  # live agent slots

    def live(self) -> list[Candidate]:
        return [c for c in self.candidates.values() if c.jobs]


Pick = tuple["Agent", "Group", list["Job"]]


def plan(state: State, now: float) -> list[Pick]:
    """Which free agent slot takes which jobs. Reads ``state``, changes nothing."""
    free = [a for a in state.agents.values() if a.free > 0]
    if not free or not state.waiting:
        return []
    targets = _targets(state, now, {a.target for a in free})
    if not targets:
        return []
    installed = {a.agent_id: a.installed for a in free}
    slots = [a for a in free for _ in range(a.free)]
    # agents whose build has waiting work choose first: they need no install
    slots.sort(key=lambda a: (_own(targets.get(a.target), installed[a.agent_id]) is None, a.agent_id))
    picks: list[Pick] = []
    for agent in slots:
        target = targets.get(agent.target)
        if target is None:
            continue
        build = installed[agent.agent_id]
        if build in target.retries and _own(target, build) is None:
            if target.retries[build] - now < state.estimates.install_s(target.name):
                continue  # waiting for its build's retry costs less than installing another build
        pick = _choose(state, target, build)
        if pick is None:
            continue
        jobs = _take(state, target, pick)
        installed[agent.agent_id] = pick.group[0]
        picks.append((agent, pick.group, jobs))
    return picks


def _targets(state: State, now: float, wanted: set[str]) -> dict[str, Target]:
    """The candidates of each wanted target, their classes and holdings."""
    est = state.estimates
    ready: dict[Group, list[Job]] = {}
    oldest: dict[tuple[str, int], float] = {}  # (target, priority) -> first submission waiting
    later: dict[Group, float] = {}  # group -> when its first retry not ready yet may run
    for job_id, due in state.retry_due.items():  # decided, not yet recorded
        job = state.jobs.get(job_id)
        if job is not None and job.target in wanted and due < later.get(job.group, INF):
            later[job.group] = due
    for group, ids in state.waiting.items():
        if group[1] not in wanted:
            continue
        jobs = [j for j in map(state.jobs.__getitem__, ids) if j.ready_at <= now]
        if len(jobs) < len(ids):  # retries backing off
            due = min(j.ready_at for j in map(state.jobs.__getitem__, ids) if j.ready_at > now)
            later[group] = min(due, later.get(group, INF))
        if not jobs:
            continue
        ready[group] = jobs
        first_of: dict[int, float] = {}
        for j in jobs:
            if j.submitted_at < first_of.get(j.priority, INF):
                first_of[j.priority] = j.submitted_at
        for priority, first in first_of.items():
            key = (group[1], priority)
            if first < oldest.get(key, INF):
                oldest[key] = first
    targets: dict[str, Target] = {}
    classes: dict[str, list[tuple[int, float, int]]] = {}
    for (name, priority), first in oldest.items():
        level = class_level(priority, now - first, state.config.aging_s)
        targets.setdefault(name, Target(name)).levels[priority] = level
        classes.setdefault(name, []).append((level, first, priority))
    ranks = {name: {p: n for n, (_, _, p) in enumerate(sorted(c))} for name, c in classes.items()}
    for group, jobs in ready.items():
        target = targets[group[1]]
        rank = ranks[group[1]]
        priorities = {j.priority for j in jobs}
        jobs.sort(key=_by_order)
        first = jobs[0].order
        jobs, estimates = _longest_first(jobs, est.tests_s(jobs), rank, len(priorities) == 1)
        if len(priorities) == 1:
            job_ranks = [rank[priorities.pop()]] * len(jobs)
        else:
            job_ranks = [rank[j.priority] for j in jobs]
        target.candidates[group] = Candidate(
            group=group,
            jobs=jobs,
            ranks=job_ranks,
            estimates=estimates,
            work_s=sum(estimates),
            first=first,
        )
    for (build, name), due in later.items():
        if name in targets:
            targets[name].retries[build] = due
    for agent in state.agents.values():
        if agent.alive and agent.target in targets:
            targets[agent.target].slots += agent.slots
    for batch in state.batches.values():
        agent = state.agents.get(batch.agent_id)
        target = targets.get(batch.group[1])
        if target is None or agent is None or not agent.alive or not batch.job_ids:
            continue
        held = [state.jobs[i] for i in batch.job_ids if i in state.jobs]
        if not held:
            continue
        target.held[held[0].org_id] += 1
        cand = target.candidates.get(batch.group)
        if cand is not None:
            cand.servers += 1
            cand.inflight_s += sum(est.tests_s(held))
    return targets


def _longest_first(
    jobs: list[Job], estimates: list[float], rank: dict[int, int], one_class: bool
) -> tuple[list[Job], list[float]]:
    """A group's jobs, given in submission order, by class rank, then run by
    run (the run with the oldest job first), and within a run longest
    estimated first: a run is done when its last job is, and starting its
    long jobs (and a long job's retries) first leaves short ones to even out
    its agents' finish. A job without a run is a run of its own.

    Stable sorts of indices, least significant key first, each keyed by a
    list's ``__getitem__``: a plan sorts every waiting job, and this keeps
    that to C loops, without a Python call per job; and none at all in the
    usual cases (one run of equal estimates, or one job per run).
    """
    runs = [j.run_id for j in jobs]
    distinct = set(runs)
    several = len(distinct) < len(jobs)  # some run has several jobs waiting
    by_estimate = several and min(estimates) < max(estimates)
    by_run = several and (len(distinct) > 1 or "" in distinct)
    if not (by_estimate or by_run or not one_class):
        return jobs, estimates
    idx = list(range(len(jobs)))
    if by_estimate:
        longest = [-e for e in estimates]
        idx.sort(key=longest.__getitem__)
    if by_run:
        first: dict[str, int] = {}
        for n, r in enumerate(runs):
            first.setdefault(r, n)  # each run's oldest job: its first in submission order
        run_first = [first[r] if r else n for n, r in enumerate(runs)]
        idx.sort(key=run_first.__getitem__)
    if not one_class:
        ranks = [rank[j.priority] for j in jobs]
        idx.sort(key=ranks.__getitem__)
    return [jobs[n] for n in idx], [estimates[n] for n in idx]


def _own(target: Target | None, installed: str | None) -> Candidate | None:
    """The group of the agent's build, if it has waiting work."""
    if target is None or installed is None:
        return None
    for c in target.candidates.values():
        if c.group[0] == installed and c.jobs:
            return c
    return None


def _choose(state: State, target: Target, installed: str | None) -> Candidate | None:
    live = target.live()
    if not live:
        return None
    own = _own(target, installed)
    install_s = state.estimates.install_s(target.name)
    held = Counter(target.held)
    if own is not None:
        held[own.org] += 1  # the agent being placed is its org's until it leaves
    by_rank: dict[int, list[Candidate]] = {}
    for c in live:
        by_rank.setdefault(c.rank, []).append(c)
    for rank in sorted(by_rank):
        at_rank = by_rank[rank]
        oldest: dict[str, int] = {}
        for c in at_rank:
            oldest[c.org] = min(oldest.get(c.org, c.first), c.first)
        at_rank.sort(key=lambda c: (held[c.org], oldest[c.org], c.first))
        for c in at_rank:
            if own is not None and c.org == own.org and c.rank == own.rank:
                return own  # the agent's own org's turn: it keeps its build
            if own is not None and not _may_leave(state, target, held, own, c):
                continue
            if c.servers == 0 or _late(state, target, c, install_s, own is None):
                return c
    if own is not None:
        return own
    # spare capacity: the run this agent shortens most, most urgent class first
    for rank in sorted(by_rank):
        best: Candidate | None = None
        best_gain = 0.0
        for c in by_rank[rank]:
            cost = 0.0 if c.group[0] == installed else _install_cost(state.config, install_s, c.priority)
            gain = c.finish_s() - c.finish_s(cost, 1)
            needed = state.config.spare_gain_installs * cost
            if gain > best_gain and gain > MIN_GAIN * c.finish_s() and gain >= needed:
                best, best_gain = c, gain
        if best is not None:
            return best
    return None


def _may_leave(state: State, target: Target, held: Counter[str], own: Candidate, c: Candidate) -> bool:
    """Whether an agent whose own group still has work may leave it for ``c``."""
    if c.priority < own.priority:  # a better priority: if nobody runs it, or it is urgent
        return c.servers == 0 or c.priority < state.config.urgent_below
    if target.levels[c.priority] + AGING_MARGIN <= target.levels[own.priority]:  # aged well past it
        return True
    return c.servers == 0 and held[c.org] == 0 and c.rank <= own.rank  # a starved org


def _late(state: State, target: Target, c: Candidate, install_s: float, idle: bool = False) -> bool:
    """Whether a running group should get one more agent, paying an install.
    ``idle``: the agent has no work of its own build, so it installs whatever
    it takes; only the install back to other work is the urgent run's cost."""
    config = state.config
    install_s = _install_cost(config, install_s, c.priority)
    finish = c.finish_s()
    if c.finish_s(install_s, 1) >= finish * (1 - MIN_GAIN):
        return False  # the agent would not shorten it
    if c.priority < config.urgent_below:
        # urgent: every agent that saves the run more than its own install
        # and the one it pays when it goes back to other work
        gain = URGENT_GAIN_INSTALLS - 1 if idle else URGENT_GAIN_INSTALLS
        return finish - c.finish_s(install_s, 1) >= gain * install_s
    alone = install_s + max(max(c.estimates), (c.inflight_s + c.work_s) / max(target.slots, 1))
    return finish > config.split_after_s * _urgency(c.priority) or finish + install_s > config.split_slowdown * alone


def _urgency(priority: int) -> float:
    """How much of a default-priority run's patience a run of ``priority``
    has: 1 at the default priority and after, less before it."""
    return min(1.0, (priority + 1) / (DEFAULT_PRIORITY + 1))


def _install_cost(config: Config, install_s: float, priority: int) -> float:
    """What placing an agent on a run of ``priority`` counts one install as:
    its estimated duration, or ``config.install_value_s`` scaled by urgency
    where that is more."""
    return max(install_s, config.install_value_s * _urgency(priority))


def _take(state: State, target: Target, c: Candidate) -> list[Job]:
    """The jobs of ``c`` for one batch; updates the candidate and holdings."""
    config = state.config
    ceiling = min((o.rank for o in target.candidates.values() if o is not c and o.jobs), default=None)
    budget = min(config.batch_s, (c.inflight_s + c.work_s) / (c.servers + 1))
    taken: list[Job] = []
    work = 0.0
    for n, job in enumerate(c.jobs[: max(config.max_batch, 1)]):
        if n and ceiling is not None and c.ranks[n] > max(ceiling, c.ranks[0]):
            break  # later classes ride along only while nothing else is more urgent
        if n and work + c.estimates[n] > budget:
            break
        work += c.estimates[n]
        taken.append(job)
    target.held[c.org] += 1
    n = len(taken)
    del c.jobs[:n], c.ranks[:n], c.estimates[:n]
    c.work_s -= work
    c.servers += 1
    c.inflight_s += work
    return taken
