@testable import Limits
import SwitchyardCore
import Testing

/// The limiter algorithms alone, with a fake clock (Unix nanoseconds passed in).
@Suite struct RateAlgorithmTests {
    static let second: Int64 = 1_000_000_000
    static let minute: Int64 = 60 * second
    /// 2026-12-01T00:00:00Z.
    static let start: Int64 = 1_796_083_200 * second

    @Test func gcraAdmitsExactlyTheLimitInAnyWindowAndNoDoubleBurstAtABoundary() {
        var rate = GCRA(limit: 20, period: Self.minute)
        var admitted = 0
        for _ in 0..<50 { if case .admitted = rate.reserve(1, now: Self.start) { admitted += 1 } }
        #expect(admitted == 20)
        // The allowance comes back continuously: one request every 3 s, not 20 at the next minute's start.
        if case .refused(let retry, let remaining, _) = rate.reserve(1, now: Self.start + Self.second) {
            #expect(retry == 2 * Self.second && remaining == 0)
        } else {
            Issue.record("admitted past the limit")
        }
        #expect(rate.remaining(now: Self.start + 3 * Self.second) == 1)
        if case .admitted = rate.reserve(1, now: Self.start + 3 * Self.second) {} else { Issue.record("not admitted after its interval") }
        // Over any span S, at most 20 + S / 3 s: never the fixed window's 40 within moments of a minute's boundary.
        var sliding = GCRA(limit: 20, period: Self.minute)
        var times: [Int64] = []
        var now = Self.start + 59 * Self.second
        while now < Self.start + 200 * Self.second {
            if case .admitted = sliding.reserve(1, now: now) { times.append(now) }
            now += Self.second / 4
        }
        for (index, time) in times.enumerated() {
            for span in [Self.second, 10 * Self.second, Self.minute, 2 * Self.minute] {
                let inSpan = times[index...].prefix { $0 < time + span }.count
                #expect(Int64(inSpan) <= 20 + span / (3 * Self.second) + 1, "\(inSpan) in \(span / Self.second) s")
            }
            #expect(times[index...].prefix { $0 < time + Self.second }.count <= 20)
        }
        // Over the long run, the rate: 200 s admitted the burst of 20 and one per 3 s after it.
        #expect(times.count <= 20 + Int((200 - 59) / 3) + 1)
    }

    @Test func gcraCountsTokensSettlesAndNeverTrapsOnExtremes() {
        var tokens = GCRA(limit: 100_000, period: Self.minute)
        let decision1 = tokens.reserve(60_000, now: Self.start)
        #expect(decision1 == .admitted(remaining: 40_000, resetIn: 36 * Self.second))
        if case .refused(let retry, _, _) = tokens.reserve(50_000, now: Self.start) {
            #expect(retry == 6 * Self.second)
        } else {
            Issue.record("over the limit")
        }
        // The answer used 20,000 fewer than reserved: given back at once.
        tokens.adjust(by: -20_000, now: Self.start)
        #expect(tokens.remaining(now: Self.start) == 60_000)
        // Used more than reserved: the next reservations wait.
        tokens.adjust(by: 90_000, now: Self.start)
        #expect(tokens.remaining(now: Self.start) == 0)
        if case .refused(let retry, _, _) = tokens.check(1, now: Self.start) { #expect(retry ?? 0 > 0) }
        // More than the whole limit: refused for good, not "retry later".
        #expect(GCRA(limit: 10, period: Self.minute).check(11, now: Self.start) == .refused(retryIn: nil, remaining: 10, resetIn: 0))
        // Extremes: huge costs, limits, periods and times saturate.
        for (limit, period, units, now) in [(Int64.max, Int64.max, Int64.max, Int64.max), (1, Int64.max, Int64.max, 0),
                                            (Int64.max, 1, 1, Int64.min), (1, 1, 0, 0), (0, 0, -5, -1)] {
            var gcra = GCRA(limit: limit, period: period)
            _ = gcra.reserve(units, now: now)
            gcra.adjust(by: .max, now: now)
            gcra.adjust(by: .min, now: now)
            _ = gcra.remaining(now: now)
        }
        // Giving back never makes a burst out of the past.
        var rate = GCRA(limit: 10, period: Self.minute)
        _ = rate.reserve(10, now: Self.start)
        rate.adjust(by: -1_000, now: Self.start + Self.second)
        #expect(rate.remaining(now: Self.start + Self.second) == 10)
        #expect(rate.tat == Self.start + Self.second)
    }

    @Test func calendarPeriodsAreUTCDaysAndMonths() {
        let day = CalendarPeriod.day.period(containing: Self.start + 5 * Self.second)
        #expect(day.start == Self.start && day.end == Self.start + 86_400 * Self.second)
        // December 2026, and the month after it starts in 2027.
        let december = CalendarPeriod.month.period(containing: Self.start + 10 * 86_400 * Self.second)
        #expect(december.start == Self.start && december.end == 1_798_761_600 * Self.second)
        #expect(december.index == (2026 - 1970) * 12 + 11)
        // February in a leap year, and the last nanosecond of a month.
        let february = CalendarPeriod.month.period(containing: 1_709_251_199 * Self.second)  // 2024-02-29T23:59:59Z
        #expect(february.start == 1_706_745_600 * Self.second && february.end == 1_709_251_200 * Self.second)
        let last = CalendarPeriod.month.period(containing: 1_709_251_200 * Self.second - 1)
        #expect(last.index == february.index)
        #expect(CalendarPeriod.month.period(containing: 1_709_251_200 * Self.second).index == february.index + 1)
        // Before 1970.
        #expect(CalendarPeriod.day.period(containing: -1).start == -86_400 * Self.second)
        #expect(CalendarPeriod.month.period(containing: -1).start == -31 * 86_400 * Self.second)
        for days: Int64 in [-800_000, -1, 0, 59, 60, 365, 11_016, 20_788, 2_000_000] {
            let (year, month, _) = CalendarPeriod.civil(fromDays: days)
            let first = CalendarPeriod.days(fromYear: year, month: month)
            #expect(first <= days && days - first < 31)
        }
    }

    @Test func calendarQuotasAreExactAndResetAtThePeriod() {
        var quota = CalendarQuota(limit: 1000, calendar: .day)
        let evening = Self.start + 23 * 3600 * Self.second
        let decision2 = quota.reserve(900, now: evening)
        #expect(decision2 == .admitted(remaining: 100, resetIn: 3600 * Self.second))
        let decision3 = quota.reserve(200, now: evening)
        #expect(decision3 == .refused(retryIn: 3600 * Self.second, remaining: 100, resetIn: 3600 * Self.second))
        let decision4 = quota.reserve(2000, now: evening)
        #expect(decision4 == .refused(retryIn: nil, remaining: 100, resetIn: 3600 * Self.second))
        quota.adjust(by: -400, reservedIn: quota.periodIndex, now: evening)
        #expect(quota.remaining(now: evening) == 500)
        // Midnight: all of it back; a settlement of yesterday's reservation does not reopen yesterday.
        let yesterday = quota.periodIndex
        let midnight = Self.start + 86_400 * Self.second
        #expect(quota.remaining(now: midnight) == 1000)
        let decision5 = quota.reserve(1000, now: midnight)
        #expect(decision5 == .admitted(remaining: 0, resetIn: 86_400 * Self.second))
        quota.adjust(by: -500, reservedIn: yesterday, now: midnight)
        #expect(quota.remaining(now: midnight) == 0)
        quota.adjust(by: .min, reservedIn: quota.periodIndex, now: midnight)
        quota.adjust(by: .max, reservedIn: quota.periodIndex, now: midnight)
        #expect(quota.remaining(now: midnight) == 0)
    }

    @Test func leasesAreBoundedAndExpire() {
        var leases = Leases(limit: 2)
        let taken1 = leases.acquire(1, now: 0, ttl: 10)
        #expect(taken1)
        let taken2 = leases.acquire(2, now: 0, ttl: 20)
        #expect(taken2)
        let taken3 = leases.acquire(3, now: 5, ttl: 10)
        #expect(!taken3)
        let taken4 = leases.acquire(1, now: 5, ttl: 10)
        #expect(taken4, "taking a held lease again renews it")
        #expect(leases.earliestExpiry(now: 5) == 10)
        leases.release(1)
        let taken5 = leases.acquire(3, now: 6, ttl: 10)
        #expect(taken5)
        // A crashed holder: its lease expires by itself.
        let taken6 = leases.acquire(4, now: 15, ttl: 10)
        #expect(!taken6)
        let taken7 = leases.acquire(4, now: 20, ttl: 10)
        #expect(taken7, "lease 2 expired at 20")
        // Renewing a lease no longer held (expired or released) does not take a permit again.
        let taken8 = leases.renew(3, now: 21, ttl: 10)
        #expect(!taken8)
        let renewed = leases.renew(4, now: 21, ttl: 10)
        #expect(renewed && leases.available(now: 21) == 1)
        let taken9 = leases.acquire(5, now: 21, ttl: 1)
        #expect(taken9)
        #expect(leases.available(now: 100) == 2)
        // Many held, released out of order, one left to expire: still exactly counted.
        var many = Leases(limit: 1000)
        for id in 0..<1000 { _ = many.acquire(UInt64(id), now: 0, ttl: id == 500 ? 10 : 1000) }
        #expect(!many.canAcquire(5000, now: 5))
        for id in 0..<400 { many.release(UInt64(id)) }
        #expect(many.available(now: 5) == 400 && many.available(now: 11) == 401)
        let again = many.acquire(5000, now: 11, ttl: 1000)
        #expect(again && many.available(now: 11) == 400 && many.held[500] == nil)
        var zero = Leases(limit: 0)
        let taken10 = zero.acquire(1, now: 0, ttl: .max)
        #expect(!taken10)
        var huge = Leases(limit: 1)
        let taken11 = huge.acquire(1, now: .max, ttl: .max)
        #expect(taken11)
    }
}

/// Reserve and settle over several limits at once, in memory.
@Suite struct LimitLedgerTests {
    static let second = RateAlgorithmTests.second
    static let now = RateAlgorithmTests.start
    static let perMinute = LimitRule.rate(limit: 20, period: 60 * second)

    @Test func aRequestIsReservedInEveryLimitOrInNone() {
        let ledger = LimitLedger()
        let user = LimitDemand(counter: "rpm/user=a", rule: Self.perMinute, units: 1)
        let tokens = LimitDemand(counter: "tpm/tenant=t", rule: .rate(limit: 1000, period: 60 * Self.second), units: 600)
        guard case .admitted(let first) = ledger.reserve([user, tokens], lease: 1, now: Self.now) else {
            Issue.record("refused under every limit")
            return
        }
        #expect(first.remaining == [19, 400])
        // The token limit refuses the second: the request limit keeps its 19.
        guard case .refused(let index, let retry, _, _) = ledger.reserve([user, tokens], lease: 2, now: Self.now) else {
            Issue.record("admitted past the token limit")
            return
        }
        #expect(index == 1 && retry == 12 * Self.second)
        #expect(ledger.remaining("rpm/user=a", now: Self.now) == 19)
        // Settled with the real usage (150 tokens, not 600): the difference comes back.
        ledger.settle(first, actual: [nil, 150], now: Self.now)
        #expect(ledger.remaining("tpm/tenant=t", now: Self.now) == 850)
        // Two demands on one counter both count.
        let double = ledger.reserve([user, user], lease: 3, now: Self.now)
        if case .admitted(let reservation) = double { #expect(reservation.remaining == [18, 17]) } else { Issue.record("\(double)") }
        // On a new counter too: over its limit together, refused and nothing stored; within it, one counter holds both,
        // and settling gives both back to it.
        let pair = LimitDemand(counter: "pair", rule: .rate(limit: 3, period: 60 * Self.second), units: 2)
        guard case .refused(1, _, _, _) = ledger.reserve([pair, pair], lease: 4, now: Self.now) else {
            Issue.record("two demands of 2 admitted by a limit of 3")
            return
        }
        #expect(ledger.remaining("pair", now: Self.now) == nil)
        let fresh = LimitDemand(counter: "fresh", rule: .rate(limit: 4, period: 60 * Self.second), units: 2)
        guard case .admitted(let both) = ledger.reserve([fresh, fresh], lease: 5, now: Self.now) else {
            Issue.record("two demands of 2 refused by a limit of 4")
            return
        }
        #expect(both.remaining == [2, 0] && ledger.remaining("fresh", now: Self.now) == 0)
        ledger.settle(both, actual: [0, 0], now: Self.now)
        #expect(ledger.remaining("fresh", now: Self.now) == 4)
    }

    @Test func concurrentCallersGetExactlyTheLimit() async {
        let ledger = LimitLedger()
        let demand = LimitDemand(counter: "rpm/tenant=t", rule: .rate(limit: 100, period: 60 * Self.second), units: 1)
        let admitted = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<16 {
                group.addTask {
                    var count = 0
                    for attempt in 0..<50 {
                        if case .admitted = ledger.reserve([demand], lease: UInt64(worker * 100 + attempt), now: Self.now) { count += 1 }
                    }
                    return count
                }
            }
            return await group.reduce(0, +)
        }
        #expect(admitted == 100)
    }

    @Test func permitsAreReleasedBySettlingAndExpireByThemselves() {
        let ledger = LimitLedger()
        let permit = LimitDemand(counter: "inflight/tenant=t", rule: .concurrent(limit: 2, ttl: 30 * Self.second), units: 1)
        guard case .admitted(let a) = ledger.reserve([permit], lease: 1, now: Self.now),
              case .admitted = ledger.reserve([permit], lease: 2, now: Self.now) else {
            Issue.record("two permits refused")
            return
        }
        guard case .refused(_, let retry, _, _) = ledger.reserve([permit], lease: 3, now: Self.now) else {
            Issue.record("a third permit of two")
            return
        }
        #expect(retry == 30 * Self.second)
        ledger.release(a, now: Self.now)
        guard case .admitted(let c) = ledger.reserve([permit], lease: 3, now: Self.now) else {
            Issue.record("not given back")
            return
        }
        // A stream renews its permit; the one whose holder crashed (lease 2) expires.
        ledger.renew(c, now: Self.now + 25 * Self.second)
        if case .admitted = ledger.reserve([permit], lease: 4, now: Self.now + 31 * Self.second) {} else { Issue.record("lease 2 did not expire") }
        if case .refused = ledger.reserve([permit], lease: 5, now: Self.now + 31 * Self.second) {} else { Issue.record("lease 3 was renewed") }
    }

    @Test func theLedgerIsBoundedAndARuleChangeStartsAgain() {
        let ledger = LimitLedger(maximumCounters: 100)
        for user in 0..<1000 {
            _ = ledger.reserve([LimitDemand(counter: "rpm/user=\(user)", rule: Self.perMinute, units: 1)], lease: 0, now: Self.now)
        }
        #expect(ledger.count <= 100)
        // None idle (all used this minute): the least recently used go in a batch (a sixteenth), so the next new
        // counters find room without another scan; the most recent stay.
        #expect(ledger.count > 90)
        #expect(ledger.remaining("rpm/user=999", now: Self.now) == 19)
        #expect(ledger.remaining("rpm/user=0", now: Self.now) == nil)
        // Idle counters go first: a minute later every one is idle, and the newest survive.
        _ = ledger.reserve([LimitDemand(counter: "rpm/user=late", rule: Self.perMinute, units: 20)], lease: 0, now: Self.now + 61 * Self.second)
        #expect(ledger.count == 1)
        // The limit raised to 40: the counter starts again under its new rule.
        let raised = LimitDemand(counter: "rpm/user=late", rule: .rate(limit: 40, period: 60 * Self.second), units: 1)
        if case .admitted(let reservation) = ledger.reserve([raised], lease: 0, now: Self.now + 61 * Self.second) {
            #expect(reservation.remaining == [39])
        } else {
            Issue.record("refused under the raised limit")
        }
        // Hostile numbers: negative units reserve nothing, huge ones are refused for good.
        let huge = LimitDemand(counter: "x", rule: .quota(limit: 10, calendar: .month), units: .max)
        if case .refused(_, let retry, _, _) = ledger.reserve([huge], lease: 0, now: Self.now) { #expect(retry == nil) } else { Issue.record("admitted") }
        #expect(LimitDemand(counter: "x", rule: Self.perMinute, units: -5).units == 0)
        // Reading what is left (GET /v1/limits, with names from a query string) creates no counters.
        let before = ledger.count
        let names = (0..<1000).map { LimitDemand(counter: "probe-\($0)-" + String(repeating: "x", count: 500), rule: Self.perMinute, units: 1) }
        #expect(ledger.remaining(names, now: Self.now).allSatisfy { $0 == 20 })
        #expect(ledger.count == before)
    }
}


/// From configured limits to the counters a request must pass.
@Suite struct LimitPlannerTests {
    static let alice = Caller(tenant: "acme", user: "alice", tier: "free", feature: "chat", keyID: "k1")

    @Test func eachApplicableLimitGivesOneDemandWithItsUnits() {
        let planner = LimitPlanner(definitions: [
            LimitDefinition(name: "rpm", measure: .requests, amount: 20, window: .minute, scope: [.user], when: [.tier: ["free"]]),
            LimitDefinition(name: "paid-rpm", measure: .requests, amount: 100, window: .minute, scope: [.user], when: [.tier: ["paid"]]),
            LimitDefinition(name: "tpm", measure: .totalTokens, amount: 100_000, window: .minute, scope: [.tier, .model]),
            LimitDefinition(name: "out-day", measure: .outputTokens, amount: 50_000, window: .day, scope: [.tenant]),
            LimitDefinition(name: "spend", measure: .spend, amount: 5_000_000_000, window: .month, scope: [.tenant], countsAllRequests: true),
            LimitDefinition(name: "inflight", measure: .concurrent, amount: 4, window: nil, scope: [.key]),
            LimitDefinition(name: "reports", measure: .requests, amount: 5, window: .hour, scope: [.feature, .user], when: [.feature: ["report"]]),
        ])
        let estimate = LimitPlanner.Estimate(inputTokens: 1200, outputTokens: 512, spend: NanoUSD(4_000))
        let demands = planner.demands(caller: Self.alice, model: "gpt-4o", estimate: estimate)
        #expect(demands.map(\.counter) == ["rpm|tenant=acme|user=alice", "tpm|tier=free|model=gpt-4o", "out-day|tenant=acme",
                                          "spend|tenant=acme", "inflight|key=k1|tenant=acme"])
        let byName = Dictionary(uniqueKeysWithValues: demands.map { (String($0.counter.prefix { $0 != "|" }), $0) })
        #expect(Set(byName.keys) == ["rpm", "tpm", "out-day", "spend", "inflight"], "the paid and report limits do not apply")
        #expect(byName["rpm"]?.rule == .rate(limit: 20, period: 60_000_000_000) && byName["rpm"]?.units == 1)
        #expect(byName["tpm"]?.units == 1712 && byName["tpm"]?.shard == "", "a tier's counter spans tenants: its own shard")
        #expect(byName["out-day"]?.rule == .quota(limit: 50_000, calendar: .day) && byName["out-day"]?.units == 512)
        #expect(byName["spend"]?.rule == .quota(limit: 5_000_000_000, calendar: .month) && byName["spend"]?.units == 4_000)
        #expect(byName["inflight"]?.rule == .concurrent(limit: 4, ttl: planner.permitTTL) && byName["inflight"]?.units == 1)
        #expect(byName["rpm"]?.shard == "tenant=acme" && byName["inflight"]?.shard == "tenant=acme")
        // A cache hit counts only where the limit says all requests.
        #expect(planner.demands(caller: Self.alice, model: "gpt-4o", estimate: estimate, cacheHit: true).map { $0.counter.prefix { $0 != "|" } }
            == ["spend"])
    }

    @Test func modelFiltersSelectTheirLimitsInOrderAndScopesAreBuiltPerLimit() {
        let planner = LimitPlanner(definitions: [
            LimitDefinition(name: "all", measure: .requests, amount: 9, window: .minute, scope: [.user]),
            LimitDefinition(name: "opus", measure: .requests, amount: 1, window: .minute, scope: [.user], when: [.model: ["opus"]]),
            LimitDefinition(name: "tier", measure: .requests, amount: 5, window: .minute, scope: [.tier]),
            LimitDefinition(name: "big", measure: .totalTokens, amount: 5, window: .minute, scope: [.user],
                            when: [.model: ["opus", "sonnet"], .tier: ["free"]]),
            LimitDefinition(name: "none", measure: .requests, amount: 5, window: .minute, scope: [.user], when: [.model: []]),
        ])
        let estimate = LimitPlanner.Estimate(inputTokens: 1, outputTokens: 1, spend: .zero)
        func names(_ model: String, _ caller: Caller = Self.alice) -> [String] {
            planner.demands(caller: caller, model: model, estimate: estimate).map(\.counter)
        }
        #expect(names("opus") == ["all|tenant=acme|user=alice", "opus|tenant=acme|user=alice", "tier|tier=free", "big|tenant=acme|user=alice"])
        #expect(names("sonnet") == ["all|tenant=acme|user=alice", "tier|tier=free", "big|tenant=acme|user=alice"])
        #expect(names("haiku") == ["all|tenant=acme|user=alice", "tier|tier=free"])
        let paid = Caller(tenant: "acme", user: "bob", tier: "paid", keyID: "k2")
        #expect(names("opus", paid) == ["all|tenant=acme|user=bob", "opus|tenant=acme|user=bob", "tier|tier=paid"])
    }

    @Test func scopesNeverMeetAcrossTenantsOrThroughCraftedNames() {
        let planner = LimitPlanner(definitions: [LimitDefinition(name: "rpm", measure: .requests, amount: 20, window: .minute, scope: [.user])])
        let estimate = LimitPlanner.Estimate(inputTokens: 0, outputTokens: 0, spend: .zero)
        let same = planner.demands(caller: Caller(tenant: "a", user: "u", keyID: "k"), model: "m", estimate: estimate)
        let other = planner.demands(caller: Caller(tenant: "b", user: "u", keyID: "k"), model: "m", estimate: estimate)
        #expect(same[0].counter != other[0].counter, "the same user name in two tenants")
        // A user named to look like another scope cannot reach its counter.
        let crafted = planner.demands(caller: Caller(tenant: "a|user=u", user: "x", keyID: "k"), model: "m", estimate: estimate)
        let plain = planner.demands(caller: Caller(tenant: "a", user: "u|tenant=a|user=x", keyID: "k"), model: "m", estimate: estimate)
        #expect(Set([same[0].counter, crafted[0].counter, plain[0].counter]).count == 3)
        // The ledger's keys (compared field by field, never written out) keep them apart too, and the limit's scope is
        // part of them: a per-tenant limit of the same name and tenant is another counter.
        #expect(Set([same[0].key, other[0].key, crafted[0].key, plain[0].key]).count == 4)
        let perTenant = LimitPlanner(definitions: [LimitDefinition(name: "rpm", measure: .requests, amount: 20, window: .minute, scope: [.tenant])])
        let tenantKey = perTenant.demands(caller: Caller(tenant: "a", user: "u", keyID: "k"), model: "m", estimate: estimate)[0]
        #expect(tenantKey.key != same[0].key && tenantKey.counter == "rpm|tenant=a" && tenantKey.shard == "tenant=a" && same[0].shard == "tenant=a")
        #expect(crafted[0].shard == "tenant=a%7Cuser%3Du")
        #expect(CounterKey.escape("a%|=b") == "a%25%7C%3Db")
        // Negative estimates reserve nothing; huge ones saturate.
        let huge = LimitPlanner(definitions: [LimitDefinition(name: "t", measure: .totalTokens, amount: 10, window: .second)])
        #expect(huge.demands(caller: Self.alice, model: "m", estimate: .init(inputTokens: .max, outputTokens: .max, spend: .zero))[0].units == .max)
        #expect(huge.demands(caller: Self.alice, model: "m", estimate: .init(inputTokens: -5, outputTokens: -5, spend: .zero))[0].units == 0)
    }
}
