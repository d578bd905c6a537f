import Admission
import Foundation
import Limits
import NIOCore
import NIOPosix
import Redis
@testable import Stores
import SwitchyardCore
import Testing

/// The admission queue shared through one redis-server: two instances waiting for one spent budget are granted in
/// one priority order, whichever instance each request waits on, and a dead instance's tickets do not block it.
@Suite(.serialized) struct SharedAdmissionTests {
    static func client(_ server: RedisServerProcess) -> RedisClient {
        RedisClient(configuration: RedisConfiguration(host: "127.0.0.1", port: server.port, connectTimeout: .seconds(1), commandTimeout: .seconds(1)),
                    group: MultiThreadedEventLoopGroup.singleton)
    }

    static func instance(_ server: RedisServerProcess) -> SharedAdmission {
        SharedAdmission(client: client(server), keyPrefix: "test:", clock: { Int64(DispatchTime.now().uptimeNanoseconds) })
    }

    /// A budget the test fills by hand: one unit per grant.
    final class Budget: Sendable {
        let units = Locked(0)
        let granted = Locked<[String]>([])

        func attempt(_ name: String) -> AdmissionAttempt<Void> {
            units.withLock { units in
                guard units > 0 else { return .refused(retryIn: 20_000_000) }
                units -= 1
                granted.withLock { $0.append(name) }
                return .granted(())
            }
        }
    }

    static func wait(_ gate: SharedAdmissionGate, _ priority: Priority, _ name: String, budget: Budget, seconds: Double = 10) async throws {
        let deadline = Int64(DispatchTime.now().uptimeNanoseconds) + Int64(seconds * 1e9)
        try await gate.admit(priority: priority, tenant: "t", cost: 1, weight: 1, deadline: deadline, onWaiting: nil) {
            budget.attempt(name)
        }
    }

    @Test func twoInstancesGrantASpentBudgetInOnePriorityOrder() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (a, b) = (Self.instance(server), Self.instance(server))
        let listeners = [Task { await a.run() }, Task { await b.run() }]
        defer { listeners.forEach { $0.cancel() } }
        try await Task.sleep(for: .milliseconds(200))
        let settings = AdmissionQueue.Settings(capacity: 100, p2Share: 0)
        let (gateA, gateB) = (a.gate("gpt|mock", settings: settings), b.gate("gpt|mock", settings: settings))
        let budget = Budget()
        var waiting: [Task<Void, any Error>] = []
        // Batch work waits on A first; then real-time requests on B.
        for index in 0..<3 {
            waiting.append(Task { try await Self.wait(gateA, .p2, "p2-\(index)", budget: budget) })
            try await Task.sleep(for: .milliseconds(50))
        }
        for index in 0..<3 {
            waiting.append(Task { try await Self.wait(gateB, .p0, "p0-\(index)", budget: budget) })
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(gateA.depth(.p2) == 3 && gateA.depth(.p0) == 3, "the counts are the shared queue's")
        #expect(gateB.isContended(for: .p2) && gateB.isContended(for: .p0))
        // The budget refills one unit at a time.
        for _ in 0..<6 {
            budget.units.withLock { $0 += 1 }
            try await Task.sleep(for: .milliseconds(150))
        }
        for task in waiting { try await task.value }
        #expect(budget.granted.withLock { $0 } == ["p0-0", "p0-1", "p0-2", "p2-0", "p2-1", "p2-2"])
        #expect(gateA.depth(.p0) == 0 && gateB.depth(.p2) == 0)
    }

    @Test func aDeadInstancesTicketIsDroppedWhenItReachesTheHead() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let live = Self.instance(server)
        let listener = Task { await live.run() }
        defer { listener.cancel() }
        let gate = live.gate("claude|mock", settings: AdmissionQueue.Settings())
        // A P0 ticket of an instance that dies at once: its lease is good for 2 s and never renewed.
        let client = Self.client(server)
        let now = wallClockNanoseconds() / 1_000_000
        let reply = try await client.evaluate(SharedAdmissionGate.enqueueScript, keys: gate.keys,
                                              arguments: ["test:admission", .string(gate.tag), 0, "other", "1", "dead", .integer(now + 2000), 100, "1"])
        #expect(reply.elements?.first?.string?.hasSuffix("|dead|1") == true)
        let budget = Budget()
        budget.units.withLock { $0 = 1 }
        let started = ContinuousClock.now
        // Contended (the dead ticket is the head): it waits until the dead one is dropped, then is granted. The
        // listener may have subscribed after the script's announcement: then the counts' refresh (each second) tells.
        for _ in 0..<75 where !gate.isContended(for: .p1) { try await Task.sleep(for: .milliseconds(20)) }
        #expect(gate.isContended(for: .p1))
        try await Self.wait(gate, .p1, "live", budget: budget)
        let waited = ContinuousClock.now - started
        #expect(budget.granted.withLock { $0 } == ["live"])
        #expect(waited < .seconds(4), "\(waited)")
        #expect(try await client.send(["ZCARD", gate.keys[0]]).integer == 0)
    }
}
