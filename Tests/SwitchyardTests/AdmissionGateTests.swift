import Admission
import Foundation
import SwitchyardCore
import Synchronization
import Testing

/// The queue's I/O shell: requests wait on a budget the test hands out one unit at a time.
@Suite struct AdmissionGateTests {
    static let ms: Int64 = 1_000_000

    /// A budget of units the test adds; a try without one is refused, to be tried again in `retryIn`.
    final class Budget: Sendable {
        let units = Mutex(0)
        let granted = Mutex<[String]>([])
        let retryIn: Int64

        init(retryIn: Int64 = 2 * AdmissionGateTests.ms) {
            self.retryIn = retryIn
        }

        func attempt(_ name: String) -> AdmissionAttempt<String> {
            let took = units.withLock { units -> Bool in
                guard units > 0 else { return false }
                units -= 1
                return true
            }
            guard took else { return .refused(retryIn: retryIn) }
            granted.withLock { $0.append(name) }
            return .granted(name)
        }
    }

    static let origin = ContinuousClock.now
    static func gate(capacity: Int = 100, p2Share: Double = 0) -> AdmissionGate {
        AdmissionGate(settings: .init(capacity: capacity, p2Share: p2Share), reaperTick: 5 * ms,
                      clock: { (ContinuousClock.now - origin).nanoseconds })
    }

    static func now() -> Int64 { (ContinuousClock.now - origin).nanoseconds }

    /// Waits (up to 5 s) until `condition` holds.
    static func eventually(_ condition: () -> Bool) async throws {
        for _ in 0..<5000 {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(1))
        }
        Issue.record("timed out")
    }

    static func waiting(_ gate: AdmissionGate) -> Int { Priority.allCases.map(gate.depth).reduce(0, +) }

    @Test func anUncontendedRequestNeverQueues() async throws {
        let gate = Self.gate(), budget = Budget()
        budget.units.withLock { $0 = 1 }
        let granted = try await gate.admit(priority: .p2, tenant: "t", cost: 1, deadline: Self.now() + 1000 * Self.ms) {
            budget.attempt("only")
        }
        #expect(granted == "only")
        #expect(Self.waiting(gate) == 0)
    }

    @Test func waitingRequestsAreGrantedInPriorityOrderNotTimerOrder() async throws {
        let gate = Self.gate(), budget = Budget()
        let deadline = Self.now() + 10_000 * Self.ms
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Arriving in the opposite order of their priorities.
            for (index, priority) in [Priority.p2, .p2, .p1, .p1, .p0, .p0].enumerated() {
                group.addTask {
                    _ = try await gate.admit(priority: priority, tenant: "t", cost: 1, deadline: deadline) {
                        budget.attempt("\(priority.name)-\(index)")
                    }
                }
                try await Self.eventually { Self.waiting(gate) == index + 1 }
            }
            // One unit at a time: each goes to the head of the queue.
            for granted in 1...6 {
                budget.units.withLock { $0 += 1 }
                try await Self.eventually { budget.granted.withLock { $0.count } == granted }
            }
            try await group.waitForAll()
        }
        #expect(budget.granted.withLock { $0 } == ["p0-4", "p0-5", "p1-2", "p1-3", "p2-0", "p2-1"])
        #expect(Self.waiting(gate) == 0)
    }

    @Test func aBurstingTenantWaitsBehindItselfNotInFrontOfOthers() async throws {
        let gate = Self.gate(), budget = Budget()
        let deadline = Self.now() + 10_000 * Self.ms
        try await withThrowingTaskGroup(of: Void.self) { group in
            var arrived = 0
            for (tenant, count) in [("burst", 6), ("quiet", 2)] {
                for index in 0..<count {
                    group.addTask {
                        _ = try await gate.admit(priority: .p0, tenant: tenant, cost: 1, deadline: deadline) {
                            budget.attempt("\(tenant)-\(index)")
                        }
                    }
                    arrived += 1
                    let expected = arrived
                    try await Self.eventually { Self.waiting(gate) == expected }
                }
            }
            for granted in 1...8 {
                budget.units.withLock { $0 += 1 }
                try await Self.eventually { budget.granted.withLock { $0.count } == granted }
            }
            try await group.waitForAll()
        }
        let order = budget.granted.withLock { $0 }
        // The quiet tenant's two are among the first four, though they arrived after all six of the burst.
        #expect(order.prefix(4).filter { $0.hasPrefix("quiet") }.count == 2, "\(order)")
    }

    @Test func aWaitingRequestExpiresAtItsDeadlineAndTheHeadWhenNoRoomComesInTime() async throws {
        let gate = Self.gate(), budget = Budget()
        let started = Self.now()
        // The head: the budget never has room; it tries every 2 ms until its deadline, 60 ms away.
        let head = Task {
            try await gate.admit(priority: .p0, tenant: "t", cost: 1, deadline: started + 60 * Self.ms) { budget.attempt("head") }
        }
        try await Self.eventually { Self.waiting(gate) == 1 }
        // Behind it, parked: ended by the reaper at its own deadline.
        let parked = Task {
            try await gate.admit(priority: .p1, tenant: "t", cost: 1, deadline: started + 30 * Self.ms) { budget.attempt("parked") }
        }
        let parkedError = await #expect(throws: AdmissionRefusal.self) { try await parked.value }
        #expect(parkedError?.reason == .expired)
        #expect(Self.now() - started >= 30 * Self.ms)
        let headError = await #expect(throws: AdmissionRefusal.self) { try await head.value }
        #expect(headError?.reason == .expired)
        #expect(headError?.retryIn == 2 * Self.ms)
        #expect(Self.now() - started < 1000 * Self.ms)
        #expect(Self.waiting(gate) == 0)
    }

    @Test func aBudgetThatCannotHaveRoomBeforeTheDeadlineRefusesAtOnce() async throws {
        let gate = Self.gate(), budget = Budget(retryIn: 60_000 * Self.ms)
        let started = Self.now()
        let error = await #expect(throws: AdmissionRefusal.self) {
            try await gate.admit(priority: .p0, tenant: "t", cost: 1, deadline: started + 10_000 * Self.ms) { budget.attempt("x") }
        }
        #expect(error?.reason == .expired)
        #expect(error?.retryIn == 60_000 * Self.ms)
        #expect(Self.now() - started < 1000 * Self.ms)
        #expect(Self.waiting(gate) == 0)
    }

    @Test func aCancelledRequestLeavesTheQueueAndTheNextMovesUp() async throws {
        let gate = Self.gate(), budget = Budget()
        let deadline = Self.now() + 10_000 * Self.ms
        let first = Task { try await gate.admit(priority: .p0, tenant: "t", cost: 1, deadline: deadline) { budget.attempt("first") } }
        try await Self.eventually { Self.waiting(gate) == 1 }
        let second = Task { try await gate.admit(priority: .p1, tenant: "t", cost: 1, deadline: deadline) { budget.attempt("second") } }
        try await Self.eventually { Self.waiting(gate) == 2 }
        first.cancel()
        await #expect(throws: CancellationError.self) { try await first.value }
        #expect(Self.waiting(gate) == 1)
        budget.units.withLock { $0 = 1 }
        #expect(try await second.value == "second")
        #expect(Self.waiting(gate) == 0)
    }

    @Test func aFullQueueShedsTheLowerPriorityForTheHigher() async throws {
        let gate = Self.gate(capacity: 1), budget = Budget()
        let deadline = Self.now() + 10_000 * Self.ms
        let low = Task { try await gate.admit(priority: .p2, tenant: "t", cost: 1, deadline: deadline) { budget.attempt("low") } }
        try await Self.eventually { gate.depth(.p2) == 1 }
        let high = Task { try await gate.admit(priority: .p0, tenant: "t", cost: 1, deadline: deadline) { budget.attempt("high") } }
        let shed = await #expect(throws: AdmissionRefusal.self) { try await low.value }
        #expect(shed?.reason == .shed)
        // Another P2 finds the queue full of a request before it.
        let full = await #expect(throws: AdmissionRefusal.self) {
            try await gate.admit(priority: .p2, tenant: "t", cost: 1, deadline: deadline) { budget.attempt("late") }
        }
        #expect(full?.reason == .full)
        budget.units.withLock { $0 = 1 }
        #expect(try await high.value == "high")
    }
}
