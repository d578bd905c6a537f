public import SwitchyardCore
import Synchronization

/// What one try at a deployment's budget gave.
public enum AdmissionAttempt<Granted: Sendable>: Sendable {
    case granted(Granted)
    /// No room: the budget has room again in this many nanoseconds (nil: unknown).
    case refused(retryIn: Int64?)
}

/// Why a request left the queue without its budget.
public struct AdmissionRefusal: Error, Sendable, Hashable {
    public enum Reason: Sendable, Hashable {
        /// The queue was full of requests that come before it.
        case full
        /// A request that comes before it needed its place in a full queue.
        case shed
        /// Its deadline passed while it waited.
        case expired
    }

    public var reason: Reason
    public var priority: Priority
    /// How long it waited (nanoseconds).
    public var waited: Int64
    /// When the budget said it would have room again, from the last try (nanoseconds from now), if it tried.
    public var retryIn: Int64?

    public init(reason: Reason, priority: Priority, waited: Int64, retryIn: Int64?) {
        self.reason = reason
        self.priority = priority
        self.waited = waited
        self.retryIn = retryIn
    }
}

/// Observes the queue (metrics).
public protocol AdmissionObserver: Sendable {
    /// A request waited and got its budget, or left without it (`refused`), after `waited` nanoseconds.
    func admissionWaited(_ priority: Priority, nanoseconds waited: Int64, refused: AdmissionRefusal.Reason?)
}

/// A deployment's queue as the attempts stage uses it: this process's (`AdmissionGate`) or shared by every instance
/// (`SharedAdmissionGate`, in Redis).
public protocol AdmissionGating: Sendable {
    /// Requests waiting, per priority.
    func depth(_ priority: Priority) -> Int
    /// Whether a request of this priority would wait behind another (so it must not try the budget first).
    func isContended(for priority: Priority) -> Bool
    /// Runs `attempt` until it is granted, in the queue's order; throws `AdmissionRefusal` when the request is
    /// refused, and `CancellationError` when its task is cancelled. `onWaiting` is given a way to read the request's
    /// position when it starts to wait.
    func admit<Granted: Sendable>(priority: Priority, tenant: String, cost: Double, weight: Double, deadline: Int64,
                                  onWaiting: (@Sendable (@escaping @Sendable () -> Int?) -> Void)?,
                                  attempt: () async throws -> AdmissionAttempt<Granted>) async throws -> Granted
}

/// The I/O shell around one deployment group's `AdmissionQueue`: a request that finds the budget spent waits in the
/// queue, and only the request at its head tries the budget again (when the budget says it has room), so requests
/// are granted in the queue's order, not in the order their timers fire. A request waiting behind others is parked
/// (a continuation) and woken when it reaches the head; the head sleeps until the budget has room, bounded by its
/// deadline. One reaper task per gate, running only while requests wait, ends those whose deadline passed.
///
/// The uncontended path never touches the queue: an empty queue lets a request try the budget at once.
public final class AdmissionGate: AdmissionGating {
    struct State {
        var queue: AdmissionQueue
        var parked: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Tickets that left the queue (shed, expired) whose request has not yet seen it; bounded by the queue's
        /// capacity, since each was waiting.
        var ended: [UInt64: AdmissionRefusal.Reason] = [:]
        var nextID: UInt64 = 0
        var reaping = false
    }

    private let state: Mutex<State>
    let clock: @Sendable () -> Int64
    let sleep: @Sendable (Int64) async throws -> Void
    /// The reaper's own: a test's fake `sleep` advances its fake clock, and a reaper sleeping through it would move the
    /// waiters' time forward by its ticks.
    let reaperSleep: @Sendable (Int64) async throws -> Void
    let observer: (any AdmissionObserver)?
    /// The reaper's longest sleep: deadlines enqueued while it sleeps are ended at most this late.
    let reaperTick: Int64

    public init(settings: AdmissionQueue.Settings = .init(), observer: (any AdmissionObserver)? = nil,
                reaperTick: Int64 = 100_000_000,
                clock: @escaping @Sendable () -> Int64,
                sleep: @escaping @Sendable (Int64) async throws -> Void = { try await Task.sleep(for: .nanoseconds($0)) },
                reaperSleep: @escaping @Sendable (Int64) async throws -> Void = { try await Task.sleep(for: .nanoseconds($0)) }) {
        state = Mutex(State(queue: AdmissionQueue(settings: settings)))
        self.clock = clock
        self.sleep = sleep
        self.reaperSleep = reaperSleep
        self.observer = observer
        self.reaperTick = max(reaperTick, 1_000_000)
    }

    /// Requests waiting, per priority.
    public func depth(_ priority: Priority) -> Int { state.withLock { $0.queue.count(priority) } }

    /// Whether a request of this priority would wait behind another (so it must not try the budget first).
    public func isContended(for priority: Priority) -> Bool {
        state.withLock { state in Priority.allCases.contains { $0 <= priority && state.queue.count($0) > 0 } }
    }

    /// Runs `attempt` until it is granted: at once when nobody waits, otherwise in the queue's order. Throws
    /// `AdmissionRefusal` when the queue is full, the request is shed or its deadline passes, whatever `attempt`
    /// throws, and `CancellationError` when the task is cancelled (its place is given up).
    public func admit<Granted: Sendable>(priority: Priority, tenant: String, cost: Double, weight: Double = 1,
                                         deadline: Int64, onWaiting: (@Sendable (@escaping @Sendable () -> Int?) -> Void)? = nil,
                                         attempt: () async throws -> AdmissionAttempt<Granted>)
        async throws -> Granted
    {
        let arrived = clock()
        var retryIn: Int64?
        if !isContended(for: priority) {
            switch try await attempt() {
            case .granted(let granted): return granted
            case .refused(let after):
                retryIn = after
                // No room before its deadline: refused now rather than at the deadline.
                if let after, after >= deadline &- clock() {
                    let refusal = AdmissionRefusal(reason: .expired, priority: priority, waited: 0, retryIn: after)
                    observer?.admissionWaited(priority, nanoseconds: 0, refused: .expired)
                    throw refusal
                }
            }
        }
        let (id, enqueued, woken) = state.withLock { state in
            state.nextID &+= 1
            let ticket = AdmissionQueue.Ticket(id: state.nextID, priority: priority, tenant: tenant, cost: cost,
                                               weight: weight, deadline: deadline)
            let enqueued = state.queue.enqueue(ticket, now: clock())
            var woken: [CheckedContinuation<Void, Never>] = []
            if case .waitingShed(let shed) = enqueued { woken = Self.end([shed], .shed, &state) }
            return (state.nextID, enqueued, woken)
        }
        for continuation in woken { continuation.resume() }
        func refusal(_ reason: AdmissionRefusal.Reason) -> AdmissionRefusal {
            let refusal = AdmissionRefusal(reason: reason, priority: priority, waited: max(clock() - arrived, 0), retryIn: retryIn)
            observer?.admissionWaited(priority, nanoseconds: refusal.waited, refused: reason)
            return refusal
        }
        switch enqueued {
        case .full: throw refusal(.full)
        case .invalid: throw refusal(.expired)
        case .waitingShed, .waiting: break
        }
        startReaper()
        // Its position, read when asked (a waiting stream's comments): nil once it left the queue.
        onWaiting?({ [weak self] in self?.state.withLock { $0.queue.position(id) } })
        do {
            while true {
                try Task.checkCancellation()
                switch turn(id) {
                case .ended(let reason): throw refusal(reason)
                case .wait:
                    await park(id)
                    continue
                case .head: break
                }
                let now = clock()
                if now >= deadline {
                    leave(id)
                    throw refusal(.expired)
                }
                switch try await attempt() {
                case .granted(let granted):
                    let woken = state.withLock { state in
                        state.queue.grant(id)
                        // Shed or expired while it tried, but granted all the same.
                        state.ended[id] = nil
                        return Self.head(&state)
                    }
                    woken?.resume()
                    observer?.admissionWaited(priority, nanoseconds: max(clock() - arrived, 0), refused: nil)
                    return granted
                case .refused(let after):
                    retryIn = after
                    let remaining = deadline &- clock()
                    guard remaining > 0, (after ?? 0) < remaining else {
                        leave(id)
                        throw refusal(.expired)
                    }
                    // Unknown: try again soon rather than never.
                    try await sleep(min(max(after ?? 100_000_000, 1_000_000), remaining))
                }
            }
        } catch let error as AdmissionRefusal {
            throw error
        } catch {
            leave(id)
            throw error
        }
    }

    enum Turn { case head, wait, ended(AdmissionRefusal.Reason) }

    private func turn(_ id: UInt64) -> Turn {
        state.withLock { state in
            if let reason = state.ended.removeValue(forKey: id) { return .ended(reason) }
            guard state.queue.contains(id) else { return .ended(.expired) }
            return state.queue.next == id ? .head : .wait
        }
    }

    /// Until woken at the head, ended, or cancelled (which wakes it to leave).
    private func park(_ id: UInt64) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    // Woken already (it became the head or was ended before parking), or cancelled: not parked.
                    if Task.isCancelled || state.ended[id] != nil || !state.queue.contains(id) || state.queue.next == id { return true }
                    state.parked[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.parked.removeValue(forKey: id) }?.resume()
        }
    }

    /// The ticket gives its place up; whoever is the head now is woken.
    private func leave(_ id: UInt64) {
        let woken = state.withLock { state in
            state.queue.cancel(id)
            state.ended[id] = nil
            return Self.head(&state)
        }
        woken?.resume()
    }

    /// Tickets the queue removed: their requests are told (the parked ones woken), and so is the new head.
    private static func end(_ ids: [UInt64], _ reason: AdmissionRefusal.Reason, _ state: inout State) -> [CheckedContinuation<Void, Never>] {
        var woken: [CheckedContinuation<Void, Never>] = []
        for id in ids {
            state.ended[id] = reason
            if let parked = state.parked.removeValue(forKey: id) { woken.append(parked) }
        }
        if let head = Self.head(&state) { woken.append(head) }
        return woken
    }

    /// The head's continuation, removed, when it is parked.
    private static func head(_ state: inout State) -> CheckedContinuation<Void, Never>? {
        guard let head = state.queue.next else { return nil }
        return state.parked.removeValue(forKey: head)
    }

    private func startReaper() {
        let start = state.withLock { state -> Bool in
            guard !state.reaping else { return false }
            state.reaping = true
            return true
        }
        guard start else { return }
        Task { [self] in await reap() }
    }

    /// Ends the tickets past their deadline, until nothing waits.
    private func reap() async {
        while true {
            let now = clock()
            let (woken, next) = state.withLock { state -> ([CheckedContinuation<Void, Never>], Int64?) in
                let expired = state.queue.expire(now: now)
                let woken = expired.isEmpty ? [] : Self.end(expired, .expired, &state)
                guard let next = state.queue.nextDeadline else {
                    state.reaping = false
                    return (woken, nil)
                }
                return (woken, next)
            }
            for continuation in woken { continuation.resume() }
            guard let next else { return }
            do {
                try await reaperSleep(min(max(next - now, 1_000_000), reaperTick))
            } catch {
                state.withLock { $0.reaping = false }
                return
            }
        }
    }
}
