public import Redis
public import SwitchyardCore
import SwitchyardModels

/// Durable jobs in Redis, shared by every instance. Every key carries the `{jobs}` hash tag (one Cluster slot), so
/// each operation is one script:
/// - `<prefix>{jobs}:job:<id>`: a hash — `record` (the job as submitted, JSON) and the fields that change (`status`,
///   `worker`, `attempts`, times, `result`, `error`, `cost`, …); expires `retention` after the job ends;
/// - `<prefix>{jobs}:stream:p0|p1|p2`: one stream per priority, read by the consumer group `workers` — each entry
///   names a job; a worker's claim is the entry pending under its name, kept fresh by `XCLAIM … JUSTID` (renewal);
///   an entry idle longer than the visibility timeout (its instance died) is taken over with `XAUTOCLAIM`;
/// - `<prefix>{jobs}:waiting`: the waiting jobs, scored by priority then submission time (positions, the bound);
/// - `<prefix>{jobs}:tenants`: waiting jobs per tenant (the per-tenant bound).
/// A job's outcome is stored only by the worker holding it while it is `running`: once, never over a cancellation.
public final class RedisJobStore: JobStore {
    let client: RedisClient
    let settings: JobSettings
    let prefix: String
    static let group = "workers"

    public init(client: RedisClient, keyPrefix: String, settings: JobSettings) {
        self.client = client
        self.settings = settings
        prefix = "\(keyPrefix){jobs}:"
    }

    public var isDurable: Bool { true }

    func jobKey(_ id: String) -> RedisArgument { .string("\(prefix)job:\(id)") }
    func streamKey(_ priority: Int) -> RedisArgument { .string("\(prefix)stream:p\(priority)") }
    var waitingKey: RedisArgument { .string("\(prefix)waiting") }
    var tenantsKey: RedisArgument { .string("\(prefix)tenants") }
    var retentionMilliseconds: Int64 { settings.retention.nanoseconds / 1_000_000 }

    static let submitScript = RedisScript("""
        if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
        if tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0') >= tonumber(ARGV[5]) then return -2 end
        redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'queued', 'attempts', '0', 'tenant', ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[7])
        redis.call('XADD', KEYS[2], '*', 'id', ARGV[6], 'tenant', ARGV[2])
        redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
        redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
        return redis.call('ZRANK', KEYS[3], ARGV[6])
        """)

    public func submit(_ job: JobRecord) async throws -> Int {
        try await ensureGroups()
        // Priority first, then the submission's millisecond: exact in a double (below 2^53).
        let score = Int64(job.priority.rawValue) * 1_000_000_000_000_000 + max(job.createdAt / 1_000_000, 0)
        let keep = max(job.deadline &- job.createdAt, 0) / 1_000_000 + retentionMilliseconds
        let reply = try await client.evaluate(
            Self.submitScript, keys: [jobKey(job.id), streamKey(job.priority.rawValue), waitingKey, tenantsKey],
            arguments: [.bytes(job.stored.serialized()), .string(job.caller.tenant), .integer(score), .integer(settings.maxQueued),
                        .integer(settings.maxQueuedPerTenant), .string(job.id), .integer(keep)])
        switch reply.integer {
        case -1: throw JobRefusal.full
        case -2: throw JobRefusal.tenantFull
        case let ahead?: return Int(clamping: ahead)
        case nil: throw RedisError.server(RedisServerError("unexpected reply to a job submission"))
        }
    }

    private let groupsReady = Locked(false)

    /// The consumer groups, created once per process (from the streams' start: entries added before count).
    func ensureGroups() async throws {
        guard !groupsReady.withLock({ $0 }) else { return }
        for level in 0..<3 {
            // A BUSYGROUP reply: another instance made it.
            let replies = try await client.pipeline([["XGROUP", "CREATE", streamKey(level), .string(Self.group), "0", "MKSTREAM"]])
            if case .error(let error)? = replies.first, error.code != "BUSYGROUP" { throw RedisError.server(error) }
        }
        groupsReady.withLock { $0 = true }
    }

    public func job(_ id: String) async throws -> JobRecord? {
        Self.record(try await client.send(["HGETALL", jobKey(id)]))
    }

    public func position(_ id: String) async throws -> Int? {
        try await client.send(["ZRANK", waitingKey, .string(id)]).integer.map { Int(clamping: $0) }
    }

    /// Per priority: an entry whose claim ran out (taken over) or a new one; an entry whose job ended or expired is
    /// acknowledged and dropped on the way (at most 16 per call). Returns the entry's id, its level, and the job's
    /// fields.
    static let claimScript = RedisScript("""
        local group, worker, idle, now = 'workers', ARGV[1], ARGV[2], ARGV[3]
        local skipped = 0
        for level = 1, 3 do
          local stream = KEYS[level]
          while skipped < 16 do
            local entry = nil
            local taken = redis.call('XAUTOCLAIM', stream, group, worker, idle, '0-0', 'COUNT', 1)
            if taken[2] and taken[2][1] then entry = taken[2][1] end
            if not entry then
              local fresh = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', 1, 'STREAMS', stream, '>')
              if fresh and fresh[1] and fresh[1][2][1] then entry = fresh[1][2][1] end
            end
            if not entry then break end
            local fields = {}
            for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
            local id = fields['id'] or ''
            local key = ARGV[4] .. 'job:' .. id
            local status = redis.call('HGET', key, 'status')
            if status == 'queued' or status == 'running' then
              if status == 'queued' then
                redis.call('ZREM', KEYS[4], id)
                if redis.call('HINCRBY', KEYS[5], fields['tenant'] or '', -1) <= 0 then redis.call('HDEL', KEYS[5], fields['tenant'] or '') end
              end
              redis.call('HSET', key, 'status', 'running', 'worker', worker, 'started_at', now, 'entry', entry[1])
              redis.call('HINCRBY', key, 'attempts', 1)
              return {entry[1], level - 1, redis.call('HGETALL', key)}
            end
            if not status then
              -- Expired while waiting: its place and its tenant's count go too.
              if redis.call('ZREM', KEYS[4], id) == 1 then
                if redis.call('HINCRBY', KEYS[5], fields['tenant'] or '', -1) <= 0 then redis.call('HDEL', KEYS[5], fields['tenant'] or '') end
              end
            end
            redis.call('XACK', stream, group, entry[1])
            redis.call('XDEL', stream, entry[1])
            skipped = skipped + 1
          end
        end
        return false
        """)

    public func claim(worker: String, now: Int64) async throws -> JobClaim? {
        try await ensureGroups()
        let reply = try await client.evaluate(
            Self.claimScript, keys: [streamKey(0), streamKey(1), streamKey(2), waitingKey, tenantsKey],
            arguments: [.string(worker), .integer(settings.visibilityTimeout.nanoseconds / 1_000_000), .integer(now), .string(prefix)])
        guard let parts = reply.elements, parts.count == 3, let entry = parts[0].string, let level = parts[1].integer,
              (0...2).contains(level), let job = Self.record(parts[2])
        else { return nil }
        return JobClaim(job: job, worker: worker, token: "\(level) \(entry)")
    }

    /// The claim's stream and entry id.
    func entry(_ claim: JobClaim) -> (stream: RedisArgument, id: String)? {
        let parts = claim.token.split(separator: " ")
        guard parts.count == 2, let level = Int(parts[0]), (0...2).contains(level) else { return nil }
        return (streamKey(level), String(parts[1]))
    }

    static let renewScript = RedisScript("""
        if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
        redis.call('XCLAIM', KEYS[2], 'workers', ARGV[1], 0, ARGV[2], 'JUSTID')
        return 1
        """)

    public func renew(_ claim: JobClaim, now: Int64) async throws -> Bool {
        guard let entry = entry(claim) else { return false }
        let reply = try await client.evaluate(Self.renewScript, keys: [jobKey(claim.job.id), entry.stream],
                                              arguments: [.string(claim.worker), .string(entry.id)])
        return reply.integer == 1
    }

    /// ARGV: worker, entry, retention (ms), then field/value pairs to set.
    static let finishScript = RedisScript("""
        if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return false end
        for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
        redis.call('HDEL', KEYS[1], 'worker', 'entry')
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        redis.call('XACK', KEYS[2], 'workers', ARGV[2])
        redis.call('XDEL', KEYS[2], ARGV[2])
        return redis.call('HGETALL', KEYS[1])
        """)

    public func finish(_ claim: JobClaim, _ outcome: JobRecord.Outcome, now: Int64) async throws -> JobRecord? {
        guard let entry = entry(claim) else { return nil }
        let done = claim.job.finished(outcome, now: now)
        var fields: [RedisArgument] = ["status", .string(done.status.rawValue), "finished_at", .integer(now)]
        if let result = done.result { fields += ["result", .bytes(result.serialized())] }
        if let error = done.error { fields += ["error", .bytes(error.serialized())] }
        if let status = done.errorStatus { fields += ["error_status", .integer(status)] }
        if let cost = done.cost { fields += ["cost", .integer(cost.value)] }
        if let model = done.servedModel { fields += ["served_model", .string(model)] }
        let reply = try await client.evaluate(Self.finishScript, keys: [jobKey(claim.job.id), entry.stream],
                                              arguments: [.string(claim.worker), .string(entry.id), .integer(retentionMilliseconds)] + fields)
        return Self.record(reply)
    }

    static let cancelScript = RedisScript("""
        local status = redis.call('HGET', KEYS[1], 'status')
        if not status then return false end
        if status == 'queued' then
          redis.call('ZREM', KEYS[2], ARGV[1])
          local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
          if redis.call('HINCRBY', KEYS[3], tenant, -1) <= 0 then redis.call('HDEL', KEYS[3], tenant) end
        end
        if status == 'queued' or status == 'running' then
          redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
          redis.call('HDEL', KEYS[1], 'worker')
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
        end
        return redis.call('HGETALL', KEYS[1])
        """)

    public func cancel(_ id: String, now: Int64) async throws -> JobRecord? {
        Self.record(try await client.evaluate(Self.cancelScript, keys: [jobKey(id), waitingKey, tenantsKey],
                                              arguments: [.string(id), .integer(now), .integer(retentionMilliseconds)]))
    }

    /// A job from its hash: the submitted record with the changing fields laid over it. Nil for anything malformed
    /// (the store's bytes are checked like a client's).
    static func record(_ reply: RESPValue) -> JobRecord? {
        guard let pairs = reply.pairs, !pairs.isEmpty else { return nil }
        var fields: [String: [UInt8]] = [:]
        for pair in pairs.prefix(64) {
            guard let name = pair.key.string, let value = pair.value.bytes else { continue }
            fields[name] = value
        }
        guard let recordBytes = fields["record"], let stored = try? JSONValue.parse(recordBytes[...]),
              var job = JobRecord(stored: stored)
        else { return nil }
        func text(_ name: String) -> String? { fields[name].map { String(decoding: $0, as: UTF8.self) } }
        func number(_ name: String) -> Int64? { text(name).flatMap { $0.utf8.count <= 19 ? Int64($0) : nil } }
        guard let status = text("status").flatMap(JobStatus.init(rawValue:)) else { return nil }
        job.status = status
        job.attempts = number("attempts").map { Int(clamping: max($0, 0)) } ?? job.attempts
        job.startedAt = number("started_at") ?? job.startedAt
        job.finishedAt = number("finished_at") ?? job.finishedAt
        if let bytes = fields["result"] { job.result = try? JSONValue.parse(bytes[...]) }
        if let bytes = fields["error"] { job.error = try? JSONValue.parse(bytes[...]) }
        job.errorStatus = number("error_status").flatMap { (100...599).contains($0) ? Int($0) : nil } ?? job.errorStatus
        job.cost = number("cost").map(NanoUSD.init) ?? job.cost
        job.servedModel = text("served_model") ?? job.servedModel
        return job
    }
}
