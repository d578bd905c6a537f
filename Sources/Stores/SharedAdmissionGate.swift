public import Admission
import Limits
public import Redis
public import SwitchyardCore
import Synchronization

/// The instances' shared admission queues, and the channel that tells them when a queue moves. One per gateway
/// process; `run` listens until shutdown.
public final class SharedAdmission: Sendable {
    let client: RedisClient
    let prefix: String
    /// This process's name in the queues (its tickets' owner, and its lease).
    let instance: String
    let observer: (any AdmissionObserver)?
    let clock: @Sendable () -> Int64
    private let gates = Mutex<[String: SharedAdmissionGate]>([:])

    public init(client: RedisClient, keyPrefix: String, observer: (any AdmissionObserver)? = nil,
                clock: @escaping @Sendable () -> Int64) {
        self.client = client
        prefix = keyPrefix
        instance = "i\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        self.observer = observer
        self.clock = clock
    }

    var channel: String { "\(prefix)admission" }

    /// The queue of one deployment (made once).
    public func gate(_ deployment: String, settings: AdmissionQueue.Settings) -> SharedAdmissionGate {
        gates.withLock { gates in
            if let gate = gates[deployment] { return gate }
            let gate = SharedAdmissionGate(admission: self, deployment: deployment, settings: settings)
            gates[deployment] = gate
            return gate
        }
    }

    /// Listens to the queues' moves until cancelled: a ticket of this instance that became a head is woken at once
    /// (without it, within a poll interval), and every instance's counts stay current.
    public func run() async {
        let subscription = client.subscribe([channel]) { [self] _, payload in
            let parts = payload.split(separator: UInt8(ascii: "\n"), maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { return }
            let tag = String(decoding: parts[0], as: UTF8.self)
            guard let gate = gates.withLock({ $0.values.first { $0.tag == tag } }) else { return }
            gate.apply(SharedAdmissionGate.Head(counts: parts[1], member: parts[2]))
        }
        await withTaskCancellationHandler {
            // The counts read again every second, whatever the messages said (one missed, an instance started after
            // the queue filled): a request must not pass a queue it cannot see.
            while !Task.isCancelled {
                for gate in gates.withLock({ Array($0.values) }) { await gate.refresh() }
                try? await Task.sleep(for: .seconds(1))
            }
        } onCancel: {
            Task { await subscription.cancel() }
        }
        await subscription.cancel()
    }
}

/// One deployment's queue shared by every instance through Redis, in the order `AdmissionQueue` keeps (P0, P1, P2
/// with P2's share; start-time fair queueing between tenants), so that the instances together grant a spent budget
/// in priority order. Only the queue's head — whichever instance holds it — tries the budget.
///
/// Keys (one hash tag per deployment: one Cluster slot, so each step is one script):
/// `<prefix>{adm:<deployment>}:q0|q1|q2` sorted sets of waiting tickets scored by their virtual start (ties in
/// arrival order: the member starts with a zero-padded sequence); `:v` the virtual times, P2's credit and the
/// sequence; `:t` each tenant's last finish per priority (expires an hour after the last request); `:l` the
/// instances' leases. A ticket is `<sequence>|<instance>|<n>`; an instance renews its lease while it has tickets, and
/// a head whose instance's lease ran out (it died) is dropped, so a killed instance's requests never block the queue.
///
/// Every change publishes the new head and the counts; the instances also poll every `pollInterval` while they have
/// tickets (leases, deadlines, a lost message). With the store unreachable a request waits in this instance's own
/// queue instead (`fallback`).
public final class SharedAdmissionGate: AdmissionGating {
    struct Local {
        var priority: Priority
        var deadline: Int64
        var parked: CheckedContinuation<Void, Never>?
        var signal: Signal?
        var position: Int?
    }

    enum Signal { case head, ended(AdmissionRefusal.Reason) }

    struct State {
        var tickets: [String: Local] = [:]
        var counts = [0, 0, 0]
        var head: String?
        var polling = false
        var serial: UInt64 = 0
    }

    /// A queue's head and counts, as a script or a message says.
    struct Head {
        var counts: [Int]
        var member: String?

        init(counts: [Int], member: String?) {
            self.counts = counts
            self.member = member
        }

        /// From a message: `c0 c1 c2` and the member (empty when nothing waits).
        init?(counts: some Collection<UInt8>, member: some Collection<UInt8>) {
            let numbers = counts.split(separator: UInt8(ascii: " ")).compactMap { part -> Int? in
                part.count <= 9 ? Int(String(decoding: part, as: UTF8.self)) : nil
            }
            guard numbers.count == 3, numbers.allSatisfy({ $0 >= 0 }) else { return nil }
            self.counts = numbers
            self.member = member.isEmpty ? nil : String(decoding: member, as: UTF8.self)
        }

        /// From a script's reply `{member, c0, c1, c2}`.
        init?(reply: RESPValue, from offset: Int = 0) {
            guard let items = reply.elements, items.count >= offset + 4 else { return nil }
            let numbers = items[(offset + 1)...(offset + 3)].compactMap { $0.integer.map { Int(clamping: max($0, 0)) } }
            guard numbers.count == 3 else { return nil }
            counts = numbers
            member = items[offset].string.flatMap { $0.isEmpty ? nil : $0 }
        }
    }

    let admission: SharedAdmission
    let settings: AdmissionQueue.Settings
    let tag: String
    let keys: [RedisArgument]
    let fallback: AdmissionGate
    private let state = Mutex(State())
    static let leaseMilliseconds: Int64 = 3_000
    static let pollInterval = Duration.milliseconds(100)

    init(admission: SharedAdmission, deployment: String, settings: AdmissionQueue.Settings) {
        self.admission = admission
        self.settings = settings
        // A deployment's id in a hash tag: braces would end the tag early.
        tag = deployment.map { $0 == "{" || $0 == "}" ? "_" : $0 }.reduce(into: "") { $0.append($1) }
        let base = "\(admission.prefix){adm:\(tag)}:"
        keys = ["q0", "q1", "q2", "v", "t", "l"].map { .string(base + $0) }
        fallback = AdmissionGate(settings: settings, observer: admission.observer, clock: admission.clock)
    }

    public func depth(_ priority: Priority) -> Int {
        state.withLock { $0.counts[priority.rawValue] } + fallback.depth(priority)
    }

    public func isContended(for priority: Priority) -> Bool {
        state.withLock { state in state.counts[...priority.rawValue].contains { $0 > 0 } } || fallback.isContended(for: priority)
    }

    var now: Int64 { wallClockNanoseconds() / 1_000_000 }
    var lease: Int64 { now + Self.leaseMilliseconds }

    // MARK: Scripts

    /// Sets `nextMember` and `counts` (the head to grant next, as `AdmissionQueue.next` chooses) and publishes them.
    static let announce = """
        local function announce()
          local counts = {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3])}
          local credit = tonumber(redis.call('HGET', KEYS[4], 'credit') or '0')
          local nextMember = nil
          if counts[3] > 0 and (credit >= 1 or (counts[1] == 0 and counts[2] == 0)) then nextMember = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
          elseif counts[1] > 0 then nextMember = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
          elseif counts[2] > 0 then nextMember = redis.call('ZRANGE', KEYS[2], 0, 0)[1] end
          nextMember = nextMember or ''
          redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. counts[1] .. ' ' .. counts[2] .. ' ' .. counts[3] .. '\\n' .. nextMember)
          return {nextMember, counts[1], counts[2], counts[3]}
        end

        """

    /// ARGV: channel, tag, priority, tenant, cost / weight, instance, lease, capacity, ticket suffix.
    static let enqueueScript = RedisScript(announce + """
        local p = tonumber(ARGV[3])
        redis.call('HSET', KEYS[6], ARGV[6], ARGV[7])
        local vt = tonumber(redis.call('HGET', KEYS[4], 'vt' .. p) or '0')
        local start = math.max(vt, tonumber(redis.call('HGET', KEYS[5], p .. '|' .. ARGV[4]) or '0'))
        local shed = ''
        if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[8]) then
          local lowest = nil
          for level = 2, 0, -1 do if redis.call('ZCARD', KEYS[level + 1]) > 0 then lowest = level break end end
          local last = lowest and redis.call('ZRANGE', KEYS[lowest + 1], -1, -1, 'WITHSCORES')
          if not last or not (lowest > p or (lowest == p and tonumber(last[2]) > start)) then return {'full', 0, 0, 0, ''} end
          redis.call('ZREM', KEYS[lowest + 1], last[1])
          shed = last[1]
        end
        local member = string.format('%016d', redis.call('HINCRBY', KEYS[4], 'seq', 1)) .. '|' .. ARGV[6] .. '|' .. ARGV[9]
        redis.call('ZADD', KEYS[p + 1], start, member)
        redis.call('HSET', KEYS[5], p .. '|' .. ARGV[4], start + tonumber(ARGV[5]))
        redis.call('PEXPIRE', KEYS[5], 3600000)
        for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], 86400000) end
        redis.call('PEXPIRE', KEYS[6], 86400000)
        local head = announce()
        return {member, head[1], head[2], head[3], head[4], shed}
        """)

    /// ARGV: channel, tag, instance, lease, now (ms). Renews the lease, drops heads whose instance died.
    static let headScript = RedisScript(announce + """
        redis.call('HSET', KEYS[6], ARGV[3], ARGV[4])
        for level = 1, 3 do
          local dropped = 0
          while dropped < 64 do
            local first = redis.call('ZRANGE', KEYS[level], 0, 0)[1]
            if not first then break end
            local owner = string.match(first, '^%d+|([^|]+)|') or ''
            if tonumber(redis.call('HGET', KEYS[6], owner) or '0') >= tonumber(ARGV[5]) then break end
            redis.call('ZREM', KEYS[level], first)
            dropped = dropped + 1
          end
        end
        return announce()
        """)

    /// ARGV: channel, tag, member, priority, P2's share, granted (1) or left (0).
    static let removeScript = RedisScript(announce + """
        local p = tonumber(ARGV[4])
        local score = redis.call('ZSCORE', KEYS[p + 1], ARGV[3])
        if score then redis.call('ZREM', KEYS[p + 1], ARGV[3]) end
        if ARGV[6] == '1' then
          if score and tonumber(score) > tonumber(redis.call('HGET', KEYS[4], 'vt' .. p) or '0') then
            redis.call('HSET', KEYS[4], 'vt' .. p, score)
          end
          local credit = tonumber(redis.call('HGET', KEYS[4], 'credit') or '0')
          if p == 2 then credit = math.max(credit - 1, 0)
          elseif redis.call('ZCARD', KEYS[3]) > 0 then credit = math.min(credit + tonumber(ARGV[5]), 1) end
          redis.call('HSET', KEYS[4], 'credit', credit)
        end
        if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('HSET', KEYS[4], 'credit', 0) end
        return announce()
        """)

    // MARK: Admission

    public func admit<Granted: Sendable>(priority: Priority, tenant: String, cost: Double, weight: Double, deadline: Int64,
                                         onWaiting: (@Sendable (@escaping @Sendable () -> Int?) -> Void)?,
                                         attempt: () async throws -> AdmissionAttempt<Granted>) async throws -> Granted {
        let clock = admission.clock
        let arrived = clock()
        var retryIn: Int64?
        func refusal(_ reason: AdmissionRefusal.Reason) -> AdmissionRefusal {
            let refusal = AdmissionRefusal(reason: reason, priority: priority, waited: max(clock() - arrived, 0), retryIn: retryIn)
            admission.observer?.admissionWaited(priority, nanoseconds: refusal.waited, refused: reason)
            return refusal
        }
        if !isContended(for: priority) {
            switch try await attempt() {
            case .granted(let granted): return granted
            case .refused(let after):
                retryIn = after
                if let after, after >= deadline &- clock() { throw refusal(.expired) }
            }
        }
        let serial = state.withLock { state -> UInt64 in
            state.serial &+= 1
            return state.serial
        }
        let ticket = AdmissionQueue.Ticket(id: serial, priority: priority, tenant: tenant, cost: cost, weight: weight, deadline: deadline)
        let reply: RESPValue
        do {
            reply = try await admission.client.evaluate(
                Self.enqueueScript, keys: keys,
                arguments: [.string(admission.channel), .string(tag), .integer(priority.rawValue), .string(tenant),
                            .string(String(ticket.cost / ticket.weight)), .string(admission.instance), .integer(lease),
                            .integer(settings.capacity), .string(String(serial))])
        } catch {
            // The store is unreachable: this instance's own queue, in the same order among its requests.
            return try await fallback.admit(priority: priority, tenant: tenant, cost: cost, weight: weight, deadline: deadline,
                                            onWaiting: onWaiting, attempt: attempt)
        }
        guard let items = reply.elements, let member = items.first?.string, member != "full" else { throw refusal(.full) }
        state.withLock { $0.tickets[member] = Local(priority: priority, deadline: deadline) }
        if let head = Head(reply: reply, from: 1) { apply(head) }
        onWaiting?({ [weak self] in self?.state.withLock { $0.tickets[member]?.position } })
        startPolling()
        var atHead = false
        do {
            while true {
                try Task.checkCancellation()
                if !atHead {
                    if case .ended(let reason) = await turn(member) {
                        _ = state.withLock { $0.tickets.removeValue(forKey: member) }
                        throw refusal(reason)
                    }
                    try Task.checkCancellation()
                    atHead = true
                }
                if clock() >= deadline {
                    await remove(member, priority: priority, granted: false)
                    throw refusal(.expired)
                }
                switch try await attempt() {
                case .granted(let granted):
                    await remove(member, priority: priority, granted: true)
                    admission.observer?.admissionWaited(priority, nanoseconds: max(clock() - arrived, 0), refused: nil)
                    return granted
                case .refused(let after):
                    retryIn = after
                    let remaining = deadline &- clock()
                    guard remaining > 0, (after ?? 0) < remaining else {
                        await remove(member, priority: priority, granted: false)
                        throw refusal(.expired)
                    }
                    try await Task.sleep(for: .nanoseconds(min(max(after ?? 100_000_000, 1_000_000), remaining)))
                    // Still the head? A request of higher priority may have come meanwhile.
                    atHead = state.withLock { $0.head == member }
                }
            }
        } catch let error as AdmissionRefusal {
            throw error
        } catch {
            // Cancelled (the client went away): its place is given up, off this task.
            Task { await self.remove(member, priority: priority, granted: false) }
            throw error
        }
    }

    /// Until the ticket is the head or ended (cancellation wakes it to leave).
    private func turn(_ member: String) async -> Signal {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    guard !Task.isCancelled, state.tickets[member] != nil, state.tickets[member]?.signal == nil else { return true }
                    state.tickets[member]?.parked = continuation
                    return false
                }
                if now { continuation.resume() }
            }
            return state.withLock { state in
                let signal = state.tickets[member]?.signal ?? .ended(.expired)
                state.tickets[member]?.signal = nil
                return signal
            }
        } onCancel: {
            state.withLock { $0.tickets[member]?.parked.take() }?.resume()
        }
    }

    /// The ticket leaves the shared queue (granted: the order moves on).
    private func remove(_ member: String, priority: Priority, granted: Bool) async {
        _ = state.withLock { $0.tickets.removeValue(forKey: member) }
        for attempt in 0..<3 {
            do {
                let reply = try await admission.client.evaluate(
                    Self.removeScript, keys: keys,
                    arguments: [.string(admission.channel), .string(tag), .string(member), .integer(priority.rawValue),
                                .string(String(settings.p2Share)), granted ? "1" : "0"])
                if let head = Head(reply: reply) { apply(head) }
                return
            } catch {
                // Left in place, a ticket whose instance lives would block the queue: tried again, then left to the
                // polls (its lease) if the store stays away.
                try? await Task.sleep(for: .milliseconds(50 << attempt))
            }
        }
    }

    /// A new head and counts: the head's request is woken if it is this instance's.
    func apply(_ head: Head?) {
        guard let head else { return }
        let woken = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.counts = head.counts
            state.head = head.member
            guard let member = head.member, state.tickets[member] != nil else { return nil }
            state.tickets[member]?.signal = .head
            return state.tickets[member]?.parked.take()
        }
        woken?.resume()
    }

    /// Reads the head and the counts (and drops dead instances' heads).
    func refresh() async {
        if let reply = try? await admission.client.evaluate(
            Self.headScript, keys: keys,
            arguments: [.string(admission.channel), .string(tag), .string(admission.instance), .integer(lease), .integer(now)]) {
            apply(Head(reply: reply))
        }
    }

    private func startPolling() {
        let start = state.withLock { state -> Bool in
            guard !state.polling else { return false }
            state.polling = true
            return true
        }
        if start { Task { await poll() } }
    }

    /// While this instance has tickets: renew its lease, read the head (dropping dead instances' heads), end the
    /// tickets past their deadline, and every second read the tickets' positions (a ticket gone was shed).
    private func poll() async {
        var round = 0
        while true {
            let (empty, expired) = state.withLock { state -> (Bool, [(String, Priority, CheckedContinuation<Void, Never>?)]) in
                if state.tickets.isEmpty {
                    state.polling = false
                    return (true, [])
                }
                let now = admission.clock()
                var expired: [(String, Priority, CheckedContinuation<Void, Never>?)] = []
                for (member, ticket) in state.tickets where ticket.deadline <= now && ticket.signal == nil {
                    state.tickets[member]?.signal = .ended(.expired)
                    expired.append((member, ticket.priority, state.tickets[member]?.parked.take()))
                }
                return (false, expired)
            }
            if empty { return }
            for (member, priority, parked) in expired {
                parked?.resume()
                await remove(member, priority: priority, granted: false)
            }
            await refresh()
            if round % 10 == 0 { await readPositions() }
            round += 1
            try? await Task.sleep(for: Self.pollInterval)
        }
    }

    /// Each ticket's place in the order (requests ahead of it); a ticket no longer in the queue was shed (or dropped).
    private func readPositions() async {
        let tickets = state.withLock { state in state.tickets.filter { $0.value.signal == nil }.prefix(1000).map { ($0.key, $0.value.priority) } }
        guard !tickets.isEmpty else { return }
        let commands: [[RedisArgument]] = tickets.map { member, priority in ["ZRANK", keys[priority.rawValue], .string(member)] }
        guard let replies = try? await admission.client.pipeline(commands), replies.count == tickets.count else { return }
        let woken = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            var woken: [CheckedContinuation<Void, Never>] = []
            for ((member, priority), reply) in zip(tickets, replies) where state.tickets[member] != nil {
                switch reply {
                case .integer(let rank):
                    let ahead = state.counts[..<priority.rawValue].reduce(0, +)
                    state.tickets[member]?.position = ahead + Int(clamping: rank)
                case .null:
                    guard state.tickets[member]?.signal == nil else { continue }
                    state.tickets[member]?.signal = .ended(.shed)
                    if let parked = state.tickets[member]?.parked.take() { woken.append(parked) }
                default:
                    continue
                }
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }
}
