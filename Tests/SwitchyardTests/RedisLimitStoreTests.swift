import Limits
import NIOCore
import NIOPosix
import Redis
@testable import Stores
import Synchronization
import Testing

/// The limits in Redis behave as the in-memory ledger does, hold exactly across instances, and roll back across
/// Cluster slots.
@Suite(.serialized) struct RedisLimitStoreTests {
    static let second = RateAlgorithmTests.second
    /// Midnight (UTC) of today, really: Redis expires a quota's key at its period's real end (PEXPIREAT), so a fixed
    /// date in the past would see every quota key expire at once.
    static let now = wallClockNanoseconds() / (86_400 * second) * (86_400 * second)
    let group = MultiThreadedEventLoopGroup.singleton

    func admitted(_ decision: LimitDecision) -> Reservation? {
        if case .admitted(let reservation) = decision { return reservation }
        return nil
    }

    /// The same checks against both backends.
    func reserveAndSettle(_ store: any LimitStore) async throws {
        let user = LimitDemand(counter: "rpm/user=a", rule: .rate(limit: 20, period: 60 * Self.second), units: 1, shard: "t")
        let tokens = LimitDemand(counter: "tpm/tenant=t", rule: .rate(limit: 1000, period: 60 * Self.second), units: 600, shard: "t")
        let first = try #require(admitted(try await store.reserve([user, tokens], lease: 1, now: Self.now)))
        #expect(first.remaining == [19, 400])
        #expect(try await store.remaining([user, tokens], now: Self.now) == [19, 400], "read without reserving")
        #expect(try await store.remaining([LimitDemand(counter: "unused", rule: .quota(limit: 7, calendar: .day), units: 1)], now: Self.now) == [7])
        #expect(first.resetIn == [3 * Self.second, 36 * Self.second])
        let second = try await store.reserve([user, tokens], lease: 2, now: Self.now)
        #expect(second == .refused(index: 1, retryIn: 12 * Self.second, remaining: 400, resetIn: 36 * Self.second))
        try await store.settle(first, actual: [nil, 150], now: Self.now)
        // 850 tokens free again; the request limit kept its 19 (the refusal took nothing).
        let after = try #require(admitted(try await store.reserve([user, tokens], lease: 3, now: Self.now)))
        #expect(after.remaining == [18, 250])
        // A daily quota, exact, and given back in its own period.
        let quota = LimitDemand(counter: "daily/tenant=t", rule: .quota(limit: 1000, calendar: .day), units: 900, shard: "t")
        let taken = try #require(admitted(try await store.reserve([quota], lease: 4, now: Self.now)))
        #expect(taken.remaining == [100])
        #expect(try await store.reserve([quota], lease: 5, now: Self.now)
            == .refused(index: 0, retryIn: 86_400 * Self.second, remaining: 100, resetIn: 86_400 * Self.second))
        try await store.settle(taken, actual: [300], now: Self.now)
        var rest = quota
        rest.units = 700
        #expect(admitted(try await store.reserve([rest], lease: 6, now: Self.now))?.remaining == [0])
        // Permits: two at once, given back by settling, and one whose holder vanished expires.
        let permit = LimitDemand(counter: "inflight/tenant=t", rule: .concurrent(limit: 2, ttl: 30 * Self.second), units: 1, shard: "t")
        let a = try #require(admitted(try await store.reserve([permit], lease: 10, now: Self.now)))
        #expect(a.remaining == [1])
        #expect(admitted(try await store.reserve([permit], lease: 11, now: Self.now))?.remaining == [0])
        #expect(admitted(try await store.reserve([permit], lease: 12, now: Self.now)) == nil)
        #expect(try await store.remaining([permit], now: Self.now) == [0])
        try await store.settle(a, actual: [], now: Self.now)
        #expect(admitted(try await store.reserve([permit], lease: 12, now: Self.now)) != nil)
        let c = try #require(admitted(try await store.reserve([permit], lease: 13, now: Self.now + 31 * Self.second)), "leases 11 and 12 expired")
        // Renewed (a long stream), lease 13 outlives its first 30 s; once given back, a late renewal does not take it.
        try await store.renew(c, now: Self.now + 50 * Self.second)
        let d = try #require(admitted(try await store.reserve([permit], lease: 14, now: Self.now + 70 * Self.second)))
        #expect(admitted(try await store.reserve([permit], lease: 15, now: Self.now + 70 * Self.second)) == nil, "lease 13 was not renewed")
        try await store.settle(c, actual: [], now: Self.now + 71 * Self.second)
        try await store.renew(c, now: Self.now + 71 * Self.second)
        #expect(admitted(try await store.reserve([permit], lease: 16, now: Self.now + 71 * Self.second)) != nil, "a renewal took a released permit")
        #expect(try await store.remaining([permit], now: Self.now + 71 * Self.second) == [0])
        try await store.settle(d, actual: [], now: Self.now + 72 * Self.second)
        // Settled in the background (Redis: sent without a task waiting for the reply): the permit comes back.
        let e = try #require(admitted(try await store.reserve([permit], lease: 17, now: Self.now + 72 * Self.second)))
        #expect(e.remaining == [0])
        #expect(admitted(try await store.reserve([permit], lease: 18, now: Self.now + 72 * Self.second)) == nil)
        store.settleInBackground(e, actual: [], now: Self.now + 72 * Self.second)
        var back = false
        for _ in 0..<200 where !back {
            back = try await store.remaining([permit], now: Self.now + 72 * Self.second) == [1]
            if !back { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(back, "the background settlement gave the permit back")
        // More than a limit allows: refused for good.
        let huge = LimitDemand(counter: "rpm/user=b", rule: .rate(limit: 20, period: 60 * Self.second), units: 21)
        if case .refused(_, let retry, _, _) = try await store.reserve([huge], lease: 20, now: Self.now) { #expect(retry == nil) }
    }

    @Test func timesFromTheServerCannotOverflow() {
        #expect(RedisLimitStore.nanoseconds(3) == 3000)
        #expect(RedisLimitStore.nanoseconds(.max) == .max && RedisLimitStore.nanoseconds(.min) == 0 && RedisLimitStore.nanoseconds(-1) == 0)
    }

    @Test func theInMemoryLedgerPassesTheSharedChecks() async throws {
        try await reserveAndSettle(LimitLedger())
    }

    @Test func redisPassesTheSameChecks() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: group)
        try await reserveAndSettle(RedisLimitStore(client: client, keyPrefix: "t:"))
        await client.close()
    }

    /// A settlement in the background against a server that went away fails, is counted, and leaves nothing
    /// waiting (the command timeout or the refused connection ends it).
    @Test func aBackgroundSettlementThatCannotReachRedisIsCountedAndEnds() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration { $0.commandTimeout = .milliseconds(500) }, group: group)
        let failures = Mutex(0)
        let store = RedisLimitStore(client: client, keyPrefix: "t:", onSettleFailure: { failures.withLock { $0 += 1 } })
        let permit = LimitDemand(counter: "inflight/tenant=t", rule: .concurrent(limit: 2, ttl: 30 * Self.second), units: 1, shard: "t")
        let reservation = try #require(admitted(try await store.reserve([permit], lease: 1, now: Self.now)))
        server.stop()
        store.settleInBackground(reservation, actual: [], now: Self.now)
        store.settleInBackground(reservation, actual: [], now: Self.now)
        let started = ContinuousClock.now
        while failures.withLock({ $0 }) < 2, ContinuousClock.now - started < .seconds(5) { try await Task.sleep(for: .milliseconds(20)) }
        #expect(failures.withLock { $0 } == 2, "both failed settlements counted")
        await client.close()
    }

    @Test func twoInstancesTogetherAdmitExactlyTheLimit() async throws {
        let server = try RedisServerProcess()
        let clients = (0..<2).map { _ in RedisClient(configuration: server.configuration { $0.poolSize = 4 }, group: group) }
        let stores = clients.map { RedisLimitStore(client: $0, keyPrefix: "t:") }
        let demand = LimitDemand(counter: "rpm/tenant=t", rule: .rate(limit: 100, period: 60 * Self.second), units: 1)
        let quota = LimitDemand(counter: "day/tenant=t", rule: .quota(limit: 150, calendar: .day), units: 1)
        let results = try await withThrowingTaskGroup(of: (Int, Int).self) { tasks in
            for worker in 0..<16 {
                let store = stores[worker % 2]
                tasks.addTask {
                    var rate = 0, daily = 0
                    for attempt in 0..<20 {
                        if case .admitted = try await store.reserve([demand], lease: UInt64(worker * 100 + attempt), now: Self.now) { rate += 1 }
                        if case .admitted = try await store.reserve([quota], lease: 0, now: Self.now) { daily += 1 }
                    }
                    return (rate, daily)
                }
            }
            var all: [(Int, Int)] = []
            for try await result in tasks { all.append(result) }
            return all
        }
        #expect(results.map(\.0).reduce(0, +) == 100)
        #expect(results.map(\.1).reduce(0, +) == 150)
        for client in clients { await client.close() }
    }

    @Test func acrossClusterSlotsARefusalGivesBackWhatOtherSlotsTook() async throws {
        let cluster = try await RedisClusterProcess()
        let client = RedisClient(configuration: cluster.configuration(), group: cluster.group)
        let store = RedisLimitStore(client: client, keyPrefix: "t:")
        // A tenant's limit and a tier's (another shard, so most likely another slot).
        let tenant = LimitDemand(counter: "rpm/tenant=t", rule: .rate(limit: 10, period: 60 * Self.second), units: 1, shard: "tenant-t")
        let tier = LimitDemand(counter: "rpm/tier=free", rule: .rate(limit: 3, period: 60 * Self.second), units: 1, shard: "tier-free")
        for lease in 0..<3 { #expect(admitted(try await store.reserve([tenant, tier], lease: UInt64(lease), now: Self.now)) != nil) }
        // The tier refuses the fourth: the tenant's unit is given back.
        guard case .refused(let index, _, _, _) = try await store.reserve([tenant, tier], lease: 3, now: Self.now) else {
            Issue.record("admitted past the tier's limit")
            return
        }
        #expect(index == 1)
        let alone = try #require(admitted(try await store.reserve([tenant], lease: 4, now: Self.now)))
        #expect(alone.remaining == [6], "3 taken with the tier, 1 now; the refused one gave its unit back")
        await client.close()
    }
}
