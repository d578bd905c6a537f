import Foundation
import Synchronization

/// What one limit counts against, for one scope value (a user, a tenant's model, …): its algorithm and bound.
public enum LimitRule: Sendable, Hashable {
    /// A smooth rate: `limit` units per `period` nanoseconds (GCRA).
    case rate(limit: Int64, period: Int64)
    /// An exact quota per UTC day or month.
    case quota(limit: Int64, calendar: CalendarPeriod)
    /// At most `limit` in flight; a permit expires `ttl` nanoseconds after it was taken or renewed.
    case concurrent(limit: Int, ttl: Int64)
}

/// One limit a request must pass: which counter (its name and scope value, e.g. "free-rpm" / "user=alice"), its rule,
/// and the units this request reserves (1 for requests and permits; the token or nano-USD estimate otherwise).
public struct LimitDemand: Sendable, Hashable {
    public var counter: String
    public var rule: LimitRule
    public var units: Int64
    /// Which counters live together (one Redis Cluster slot: a request's counters of one tenant are reserved in one
    /// script); empty: the counter alone.
    public var shard: String

    public init(counter: String, rule: LimitRule, units: Int64, shard: String = "") {
        self.counter = counter
        self.rule = rule
        self.units = max(units, 0)
        self.shard = shard
    }
}

/// The state of one counter, whichever its rule.
enum CounterState: Sendable, Hashable {
    case rate(GCRA)
    case quota(CalendarQuota)
    case concurrent(Leases)

    init(_ rule: LimitRule) {
        switch rule {
        case .rate(let limit, let period): self = .rate(GCRA(limit: limit, period: period))
        case .quota(let limit, let calendar): self = .quota(CalendarQuota(limit: limit, calendar: calendar))
        case .concurrent(let limit, _): self = .concurrent(Leases(limit: limit))
        }
    }

    /// Runs `body` on the permits in place: the payload is moved out before it is changed, so a dictionary's
    /// leases are not copied whole on every request (through `Dictionary`'s in-place subscript, the only reference).
    mutating func withLeases(_ body: (inout Leases) -> Void) {
        guard case .concurrent(var leases) = self else { return }
        self = .rate(GCRA(limit: 1, period: 1))
        body(&leases)
        self = .concurrent(leases)
    }

    /// A settlement: `delta` more or fewer units than reserved (a quota only in the period it was reserved in), or
    /// the lease's permit back.
    mutating func settle(delta: Int64, period: Int64, lease: UInt64, now: Int64) {
        switch self {
        case .rate(var gcra):
            gcra.adjust(by: delta, now: now)
            self = .rate(gcra)
        case .quota(var quota):
            quota.adjust(by: delta, reservedIn: period, now: now)
            self = .quota(quota)
        case .concurrent:
            withLeases { $0.release(lease) }
        }
    }

    /// Whether it holds nothing a fresh state would not (so dropping it loses nothing).
    func isIdle(now: Int64) -> Bool {
        switch self {
        case .rate(let gcra): gcra.tat <= now
        case .quota(let quota): quota.remaining(now: now) == quota.limit
        case .concurrent(let leases): leases.available(now: now) == leases.limit
        }
    }
}

/// The outcome of reserving a request's demands, all or nothing.
public enum LimitDecision: Sendable, Hashable {
    /// Every limit admitted it. Per demand, in order: what is left and when all of it is free again (ns).
    case admitted(Reservation)
    /// A limit refused (the first, in order); nothing was reserved. `retryIn`: when the same request would pass that
    /// limit (ns; nil: never, it asks for more than the limit allows); the honest `retry-after`.
    case refused(index: Int, retryIn: Int64?, remaining: Int64, resetIn: Int64)
}

/// Where the counters live: this process (`LimitLedger`), or Redis, shared by every instance. Each reservation
/// is settled exactly once, on every path (the caller's duty; the permits it holds expire by themselves otherwise).
public protocol LimitStore: Sendable {
    /// Reserves every demand, or none. `lease` identifies this request's concurrency permits.
    func reserve(_ demands: [LimitDemand], lease: UInt64, now: Int64) async throws -> LimitDecision
    /// The real units per demand (nil: as reserved); gives back the permits.
    func settle(_ reservation: Reservation, actual: [Int64?], now: Int64) async throws
    /// Units each demand's counter has left now (its whole limit when never used), reserving nothing.
    func remaining(_ demands: [LimitDemand], now: Int64) async throws -> [Int64]
    /// Extends the reservation's concurrency permits by their lease time from `now` (a long stream keeps its
    /// permits; a crashed instance stops renewing, and its permits expire).
    func renew(_ reservation: Reservation, now: Int64) async throws
    /// Settles without making the caller wait for the store (and without failing it: a settlement that fails is
    /// lost, and the reservation stands as made).
    func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64)
}

extension LimitStore {
    public func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        Task { try? await settle(reservation, actual: actual, now: now) }
    }
}

/// Unix nanoseconds now: limits shared by instances count in wall-clock time.
public func wallClockNanoseconds() -> Int64 {
    Int64((Date().timeIntervalSince1970 * 1e9).rounded())
}

extension LimitRule {
    public var isConcurrent: Bool {
        if case .concurrent = self { true } else { false }
    }

    /// The whole allowance: what an unused counter has left.
    public var capacity: Int64 {
        switch self {
        case .rate(let limit, _): max(limit, 1)
        case .quota(let limit, _): max(limit, 0)
        case .concurrent(let limit, _): Int64(max(limit, 0))
        }
    }
}

/// What was reserved, to settle or release later: the demands, the period each quota counted in, the lease id.
public struct Reservation: Sendable, Hashable {
    public let demands: [LimitDemand]
    public let lease: UInt64
    /// Per demand: the quota period it was counted in (nil for other rules).
    public let periods: [Int64?]
    /// Per demand: units left after this reservation and nanoseconds until the counter is wholly free.
    public let remaining: [Int64]
    public let resetIn: [Int64]
    /// Per demand, where the store keeps its counter (the Redis key), when the store names them: the settlement and
    /// renewals reuse them instead of deriving them again. Empty for the in-memory ledger.
    public let storeKeys: [String]

    public init(demands: [LimitDemand], lease: UInt64, periods: [Int64?], remaining: [Int64], resetIn: [Int64],
                storeKeys: [String] = []) {
        self.demands = demands
        self.lease = lease
        self.periods = periods
        self.remaining = remaining
        self.resetIn = resetIn
        self.storeKeys = storeKeys
    }
}

/// Every counter in this process, under one short lock: a request's limits are checked and reserved together, so a
/// refusal by one reserves nothing in the others and no two requests can both take the last unit. The in-memory
/// backend (the embedded default); the Redis one does the same in one script.
///
/// Bounded at `maximumCounters`: past it, counters that hold nothing a fresh one would not are dropped first (losslessly),
/// then the least recently used, whose users then get one window's allowance again.
public final class LimitLedger: LimitStore {
    /// A counter and when it was last used (its place in the eviction order), in one entry: one hash per lookup.
    private struct Entry: Sendable {
        var counter: CounterState
        var touched: UInt64
    }

    private struct State: Sendable {
        var counters: [String: Entry] = [:]
        var clock: UInt64 = 0
    }

    private let state = Mutex(State())
    public let maximumCounters: Int

    public init(maximumCounters: Int = 200_000) {
        self.maximumCounters = max(maximumCounters, 1)
    }

    public var count: Int { state.withLock { $0.counters.count } }

    /// Reserves every demand, or none. `lease` identifies this request's concurrency permits.
    public func reserve(_ demands: [LimitDemand], lease: UInt64, now: Int64) -> LimitDecision {
        state.withLock { state in
            var remaining: [Int64] = [], resets: [Int64] = [], periods: [Int64?] = []
            remaining.reserveCapacity(demands.count)
            resets.reserveCapacity(demands.count)
            periods.reserveCapacity(demands.count)
            // Checked first, changed only once every demand passed. Rates and quotas are small values, worked on as
            // copies; permits are checked without being taken, and taken in place below (no copy of them is kept
            // here: a second reference would make the change copy every lease). Read through what this reservation
            // already took: two demands on one counter both count.
            var pending: [CounterState?] = []
            pending.reserveCapacity(demands.count)
            // Where each stored counter is: written back through its position below, without hashing its name again.
            var slots: [Dictionary<String, Entry>.Index?] = []
            slots.reserveCapacity(demands.count)
            for (index, demand) in demands.enumerated() {
                let slot = state.counters.index(forKey: demand.counter)
                // Two demands on one stored counter have one position (compared without comparing names).
                let earlier = index == 0 ? nil : (0..<index).last {
                    slots[$0] == slot && (slot != nil || demands[$0].counter == demand.counter)
                }.flatMap { pending[$0] }
                slots.append(slot)
                let counter = (earlier ?? slot.map { state.counters.values[$0].counter }).flatMap { Self.matching($0, demand.rule) }
                    ?? CounterState(demand.rule)
                switch counter {
                case .rate(var gcra):
                    switch gcra.reserve(demand.units, now: now) {
                    case .admitted(let left, let reset):
                        remaining.append(left); resets.append(reset); periods.append(nil)
                    case .refused(let retry, let left, let reset):
                        return .refused(index: index, retryIn: retry, remaining: left, resetIn: reset)
                    }
                    pending.append(.rate(gcra))
                case .quota(var quota):
                    switch quota.reserve(demand.units, now: now) {
                    case .admitted(let left, let reset):
                        remaining.append(left); resets.append(reset); periods.append(quota.periodIndex)
                    case .refused(let retry, let left, let reset):
                        return .refused(index: index, retryIn: retry, remaining: left, resetIn: reset)
                    }
                    pending.append(.quota(quota))
                case .concurrent(let leases):
                    guard leases.canAcquire(lease, now: now) else {
                        return .refused(index: index, retryIn: leases.earliestExpiry(now: now), remaining: 0,
                                        resetIn: leases.earliestExpiry(now: now) ?? 0)
                    }
                    remaining.append(Int64(leases.available(now: now) - (leases.held[lease] == nil ? 1 : 0)))
                    resets.append(0); periods.append(nil)
                    pending.append(nil)
                }
            }
            state.clock &+= 1
            let clock = state.clock
            // Stored counters first, in place (their positions stay valid while nothing is added), then the new ones
            // (an insertion may move every entry, or evict).
            var added = false
            for (offset, demand) in demands.enumerated() {
                guard let slot = slots[offset] else {
                    added = true
                    continue
                }
                if let counter = pending[offset] {
                    state.counters.values[slot] = Entry(counter: counter, touched: clock)
                } else if case .concurrent(_, let ttl) = demand.rule {
                    if Self.matching(state.counters.values[slot].counter, demand.rule) == nil {
                        state.counters.values[slot].counter = CounterState(demand.rule)
                    }
                    state.counters.values[slot].counter.withLeases { _ = $0.acquire(lease, now: now, ttl: ttl) }
                    state.counters.values[slot].touched = clock
                }
            }
            if added {
                for (offset, demand) in demands.enumerated() where slots[offset] == nil {
                    if let counter = pending[offset] {
                        Self.store(&state, demand.counter, counter, now: now, limit: maximumCounters)
                        continue
                    }
                    guard case .concurrent(_, let ttl) = demand.rule else { continue }
                    if !Self.acquire(&state.counters[demand.counter], rule: demand.rule, lease: lease, now: now, ttl: ttl, clock: clock) {
                        var fresh = CounterState(demand.rule)
                        fresh.withLeases { _ = $0.acquire(lease, now: now, ttl: ttl) }
                        Self.store(&state, demand.counter, fresh, now: now, limit: maximumCounters)
                    }
                }
            }
            return .admitted(Reservation(demands: demands, lease: lease, periods: periods, remaining: remaining, resetIn: resets))
        }
    }

    /// Settles a reservation with the real units per demand (`actual[i]` for `demands[i]`; a missing one keeps what
    /// was reserved) and releases its permits. Call exactly once per admitted reservation, on every path.
    public func settle(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        state.withLock { state in
            for (index, demand) in reservation.demands.enumerated() {
                let used = index < actual.count ? actual[index].map { max($0, 0) } ?? demand.units : demand.units
                let delta = used > demand.units ? used - demand.units : -(demand.units - used)
                // A rate or quota that used what it reserved (a request counter, say) has nothing to settle.
                if delta == 0, !demand.rule.isConcurrent { continue }
                let period = index < reservation.periods.count ? reservation.periods[index] ?? .min : .min
                // In place, through the dictionary's own storage: one lookup.
                state.counters[demand.counter]?.counter.settle(delta: delta, period: period, lease: reservation.lease, now: now)
            }
        }
    }

    /// In memory a settlement is a short lock: done at once, without a task.
    public func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        settle(reservation, actual: actual, now: now)
    }

    /// Gives a reservation back whole (the request never reached the model): `settle` with zero units.
    public func release(_ reservation: Reservation, now: Int64) {
        settle(reservation, actual: reservation.demands.map { _ in 0 }, now: now)
    }

    /// Keeps a long request's permits (a stream) from expiring.
    public func renew(_ reservation: Reservation, now: Int64) {
        state.withLock { state in
            for demand in reservation.demands {
                guard case .concurrent(_, let ttl) = demand.rule else { continue }
                state.counters[demand.counter]?.counter.withLeases { _ = $0.renew(reservation.lease, now: now, ttl: ttl) }
            }
        }
    }

    public func remaining(_ demands: [LimitDemand], now: Int64) -> [Int64] {
        demands.map { demand in
            state.withLock { state in
                state.counters[demand.counter].flatMap { Self.matching($0.counter, demand.rule) }.map { counter -> Int64 in
                    switch counter {
                    case .rate(let gcra): gcra.remaining(now: now)
                    case .quota(let quota): quota.remaining(now: now)
                    case .concurrent(let leases): Int64(leases.available(now: now))
                    }
                } ?? demand.rule.capacity
            }
        }
    }

    /// Units left on a counter now (nil: never used, so its whole limit).
    public func remaining(_ counter: String, now: Int64) -> Int64? {
        state.withLock { state in
            switch state.counters[counter]?.counter {
            case .rate(let gcra): gcra.remaining(now: now)
            case .quota(let quota): quota.remaining(now: now)
            case .concurrent(let leases): Int64(leases.available(now: now))
            case nil: nil
            }
        }
    }

    /// Takes the permit in a stored counter of `rule`, in place (through the dictionary's own storage: one lookup,
    /// and the leases are not copied); false when there is none to take it in.
    private static func acquire(_ entry: inout Entry?, rule: LimitRule, lease: UInt64, now: Int64, ttl: Int64, clock: UInt64) -> Bool {
        guard entry.map({ matching($0.counter, rule) != nil }) == true else { return false }
        entry?.counter.withLeases { _ = $0.acquire(lease, now: now, ttl: ttl) }
        entry?.touched = clock
        return true
    }

    /// A stored state whose rule changed (a configuration reload) starts again.
    private static func matching(_ state: CounterState, _ rule: LimitRule) -> CounterState? {
        switch (state, rule) {
        case (.rate(let gcra), .rate(let limit, let period)) where gcra.limit == max(limit, 1) && gcra.period == max(period, 1): state
        case (.quota(let quota), .quota(let limit, let calendar)) where quota.limit == max(limit, 0) && quota.calendar == calendar: state
        case (.concurrent(let leases), .concurrent(let limit, _)) where leases.limit == max(limit, 0): state
        default: nil
        }
    }

    private static func store(_ state: inout State, _ name: String, _ counter: CounterState, now: Int64, limit: Int) {
        if state.counters.count >= limit, state.counters[name] == nil {
            // Full: drop every counter a fresh one would equal; if that leaves more than fifteen sixteenths, also the
            // least recently used down to them, so that the scan is paid once per many new counters, not by each
            // (callers choose the number of counters: one each would make every request a full scan).
            let idle = state.counters.filter { $0.value.counter.isIdle(now: now) }.keys
            for key in idle { state.counters[key] = nil }
            let target = limit - max(limit / 16, 1)
            if state.counters.count > target {
                let oldest = state.counters.sorted { $0.value.touched < $1.value.touched }.prefix(state.counters.count - target)
                for (key, _) in oldest { state.counters[key] = nil }
            }
        }
        state.counters[name] = Entry(counter: counter, touched: state.clock)
    }
}
