import Crypto
public import SwitchyardModels

/// Where a background job is in its life. `completed`, `failed` and `cancelled` are final: a job's outcome is stored
/// once and never changes afterwards.
public enum JobStatus: String, Sendable, Hashable, CaseIterable {
    case queued, running, completed, failed, cancelled

    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// A chat request accepted to run in the background (`POST /v1/jobs`, or a request the limits refused whose policy
/// queues it), and what became of it. Holds the caller it runs as, never the key it was submitted with.
public struct JobRecord: Sendable, Hashable {
    public var id: String
    public var caller: Caller
    public var priority: Priority
    /// The API the request speaks: its answer (or error) is stored in that API's format.
    public var format: APIFormat
    /// The chat request as submitted (validated at submission; `stream` is not honoured, a job's answer is whole).
    public var request: JSONValue
    public var model: String
    /// Where the outcome is posted when the job ends (signed with the gateway's webhook secret).
    public var webhook: String?
    /// Unix nanoseconds.
    public var createdAt: Int64
    /// Unix nanoseconds: a job not finished by then fails as expired.
    public var deadline: Int64
    public var status: JobStatus
    /// Runs started (more than one when an instance died running it and another took it over).
    public var attempts: Int
    public var startedAt: Int64?
    public var finishedAt: Int64?
    /// The answer's body, in `format`.
    public var result: JSONValue?
    /// The error's envelope, in `format`, with its HTTP status.
    public var error: JSONValue?
    public var errorStatus: Int?
    public var cost: NanoUSD?
    /// The model that answered (a route's choice, a downgrade's target).
    public var servedModel: String?

    public init(id: String, caller: Caller, priority: Priority, format: APIFormat, request: JSONValue, model: String,
                webhook: String? = nil, createdAt: Int64, deadline: Int64) {
        self.id = id
        self.caller = caller
        self.priority = priority
        self.format = format
        self.request = request
        self.model = model
        self.webhook = webhook
        self.createdAt = createdAt
        self.deadline = deadline
        status = .queued
        attempts = 0
    }

    /// A new job id: `job_` and 32 hex digits of randomness (not guessable: the id is all a tenant's poll shows).
    public static func makeID() -> String {
        var generator = SystemRandomNumberGenerator()
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var bytes = Array("job_".utf8)
        for _ in 0..<2 {
            let value = generator.next() as UInt64
            for shift in stride(from: 60, through: 0, by: -4) { bytes.append(hex[Int((value >> UInt64(shift)) & 0xF)]) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether `text` has the shape of a job id (checked before any store is asked about it).
    public static func isValidID(_ text: Substring) -> Bool {
        text.utf8.count == 36 && text.hasPrefix("job_")
            && text.utf8.dropFirst(4).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// What ends a job.
    public enum Outcome: Sendable, Hashable {
        case completed(result: JSONValue, cost: NanoUSD?, model: String?)
        case failed(status: Int, error: JSONValue)
    }

    /// The job with `outcome` applied at `now`.
    public func finished(_ outcome: Outcome, now: Int64) -> JobRecord {
        var job = self
        job.finishedAt = now
        switch outcome {
        case .completed(let result, let cost, let model):
            job.status = .completed
            job.result = result
            job.cost = cost
            job.servedModel = model
        case .failed(let status, let error):
            job.status = .failed
            job.errorStatus = status
            job.error = error
        }
        return job
    }

    // MARK: Stored form

    /// The whole record as one JSON object (how the Redis store keeps it).
    public var stored: JSONValue {
        var object: [String: JSONValue] = [
            "id": .string(id), "tenant": .string(caller.tenant), "user": .string(caller.user), "tier": .string(caller.tier),
            "feature": .string(caller.feature), "key_id": .string(caller.keyID), "key_priority": .string(caller.priority.name),
            "priority": .string(priority.name), "format": .string(format.rawValue), "request": request, "model": .string(model),
            "created_at": .int(createdAt), "deadline": .int(deadline), "status": .string(status.rawValue), "attempts": .int(Int64(attempts)),
        ]
        if let webhook { object["webhook"] = .string(webhook) }
        if let startedAt { object["started_at"] = .int(startedAt) }
        if let finishedAt { object["finished_at"] = .int(finishedAt) }
        if let result { object["result"] = result }
        if let error { object["error"] = error }
        if let errorStatus { object["error_status"] = .int(Int64(errorStatus)) }
        if let cost { object["cost"] = .int(cost.value) }
        if let servedModel { object["served_model"] = .string(servedModel) }
        return .object(object)
    }

    /// A record from its stored form; nil when anything is missing or out of range (a store's bytes are not trusted
    /// more than a client's).
    public init?(stored: JSONValue) {
        guard let object = stored.objectValue,
              let id = object["id"]?.stringValue, let tenant = object["tenant"]?.stringValue, let user = object["user"]?.stringValue,
              let tier = object["tier"]?.stringValue, let feature = object["feature"]?.stringValue,
              let keyID = object["key_id"]?.stringValue,
              let keyPriority = object["key_priority"]?.stringValue.flatMap(Priority.init(name:)),
              let priority = object["priority"]?.stringValue.flatMap(Priority.init(name:)),
              let format = object["format"]?.stringValue.flatMap(APIFormat.init(rawValue:)),
              let request = object["request"], let model = object["model"]?.stringValue,
              let createdAt = object["created_at"]?.intValue, let deadline = object["deadline"]?.intValue,
              let status = object["status"]?.stringValue.flatMap(JobStatus.init(rawValue:)),
              let attempts = object["attempts"]?.intValue, (0...1_000_000).contains(attempts)
        else { return nil }
        self.init(id: id, caller: Caller(tenant: tenant, user: user, tier: tier, feature: feature, keyID: keyID, priority: keyPriority),
                  priority: priority, format: format, request: request, model: model, webhook: object["webhook"]?.stringValue,
                  createdAt: createdAt, deadline: deadline)
        self.status = status
        self.attempts = Int(attempts)
        startedAt = object["started_at"]?.intValue
        finishedAt = object["finished_at"]?.intValue
        result = object["result"]
        error = object["error"]
        errorStatus = object["error_status"]?.intValue.flatMap { (100...599).contains($0) ? Int($0) : nil }
        cost = object["cost"]?.intValue.map(NanoUSD.init)
        servedModel = object["served_model"]?.stringValue
    }
}

/// A job a worker took, and what the store needs to know it by (the Redis store's stream entry).
public struct JobClaim: Sendable, Hashable {
    public var job: JobRecord
    public var worker: String
    public var token: String

    public init(job: JobRecord, worker: String, token: String) {
        self.job = job
        self.worker = worker
        self.token = token
    }
}

/// Why a job was not accepted.
public enum JobRefusal: Error, Sendable, Hashable {
    /// The store holds as many waiting jobs as it may.
    case full
    /// The tenant has as many waiting jobs as one tenant may.
    case tenantFull
}

/// The jobs' store: the in-memory book (the embedded default; jobs die with the process) or Redis (durable: a job a
/// killed instance was running is taken over by another after the visibility timeout). Times are Unix nanoseconds.
public protocol JobStore: Sendable {
    /// Whether accepted jobs outlive this process.
    var isDurable: Bool { get }
    /// Accepts `job` (status `queued`), or throws `JobRefusal`.
    /// - Returns: The number of jobs ahead of it.
    func submit(_ job: JobRecord) async throws -> Int
    func job(_ id: String) async throws -> JobRecord?
    /// The number of waiting jobs that will run before it; nil when it no longer waits.
    func position(_ id: String) async throws -> Int?
    /// The next job to run, P0 before P1 before P2 and oldest first, now `running` under `worker`'s lease (or a job
    /// whose lease ran out, taken over). A job past its deadline is claimed too: the worker fails it as expired.
    func claim(worker: String, now: Int64) async throws -> JobClaim?
    /// Extends the claim's lease; false when the job was cancelled or is no longer this worker's.
    func renew(_ claim: JobClaim, now: Int64) async throws -> Bool
    /// Stores the outcome, once: nil when it was not stored (the job was cancelled, or another worker holds it).
    func finish(_ claim: JobClaim, _ outcome: JobRecord.Outcome, now: Int64) async throws -> JobRecord?
    /// Cancels a job that has not ended; returns it as it is now (nil when unknown).
    func cancel(_ id: String, now: Int64) async throws -> JobRecord?
}

/// The jobs (YAML `jobs:`).
public struct JobSettings: Sendable, Hashable {
    /// Jobs one instance runs at once.
    public var workers = 8
    /// How long a finished job's result is kept.
    public var retention: Duration = .seconds(86_400)
    /// Jobs waiting at most, all tenants together.
    public var maxQueued = 100_000
    /// Jobs one tenant may have waiting.
    public var maxQueuedPerTenant = 10_000
    /// Finished jobs kept at most by the in-memory store (the oldest go first).
    public var maxRetained = 100_000
    /// Redis: how long a job's claim lasts without renewal (a killed instance's jobs are taken over after it).
    public var visibilityTimeout: Duration = .seconds(30)
    /// Per priority (`Priority.rawValue`): how long a job may take from submission to its end.
    public var deadlines: [Duration] = [.seconds(60), .seconds(600), .seconds(86_400)]
    /// Deliveries of one webhook at most (the first and its retries).
    public var webhookAttempts = 5
    /// The first retry's delay; each next one doubles it (with full jitter).
    public var webhookBackoff: Duration = .seconds(1)
    /// How long one delivery may take.
    public var webhookTimeout: Duration = .seconds(10)
    /// How often the workers look for work when there was none.
    public var pollInterval: Duration = .milliseconds(200)
    /// How P2 jobs of models with `batch: auto` are grouped for the providers' batch APIs.
    public var batch = BatchSettings()

    public init() {}

    public func deadline(_ priority: Priority) -> Duration { deadlines[priority.rawValue] }
}

extension ConfigLoader {
    /// `jobs: {workers, retention_seconds, max_queued, max_queued_per_tenant, max_retained, visibility_timeout_seconds,
    /// deadlines: {p0_seconds, p1_seconds, p2_seconds}, webhook_attempts, webhook_backoff_seconds, webhook_timeout_seconds,
    /// poll_interval_seconds, batch: {...}}`.
    static func parseJobs(_ reader: MappingReader) throws(ConfigError) -> JobSettings {
        var settings = JobSettings()
        func duration(_ key: String, in range: ClosedRange<Double>) throws(ConfigError) -> Duration? {
            try reader.double(key, in: range).map { .nanoseconds(Int64(($0 * 1e9).rounded())) }
        }
        settings.workers = try reader.int("workers", in: 0...1024) ?? settings.workers
        settings.retention = try duration("retention_seconds", in: 1...31_536_000) ?? settings.retention
        settings.maxQueued = try reader.int("max_queued", in: 1...10_000_000) ?? settings.maxQueued
        settings.maxQueuedPerTenant = try reader.int("max_queued_per_tenant", in: 1...10_000_000) ?? settings.maxQueuedPerTenant
        settings.maxRetained = try reader.int("max_retained", in: 1...10_000_000) ?? settings.maxRetained
        settings.visibilityTimeout = try duration("visibility_timeout_seconds", in: 0.1...3600) ?? settings.visibilityTimeout
        if let deadlines = try reader.mapping("deadlines") {
            for priority in Priority.allCases {
                if let seconds = try deadlines.double("\(priority.name)_seconds", in: 0.001...2_592_000) {
                    settings.deadlines[priority.rawValue] = .nanoseconds(Int64((seconds * 1e9).rounded()))
                }
            }
            try deadlines.finish()
        }
        settings.webhookAttempts = try reader.int("webhook_attempts", in: 1...20) ?? settings.webhookAttempts
        settings.webhookBackoff = try duration("webhook_backoff_seconds", in: 0.001...3600) ?? settings.webhookBackoff
        settings.webhookTimeout = try duration("webhook_timeout_seconds", in: 0.01...300) ?? settings.webhookTimeout
        settings.pollInterval = try duration("poll_interval_seconds", in: 0.001...60) ?? settings.pollInterval
        if let batch = try reader.mapping("batch") { settings.batch = try parseBatch(batch) }
        try reader.finish()
        return settings
    }
}

/// The signature of a webhook delivery (`x-switchyard-signature`): `t=<Unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" under the secret>`. The time is signed with the body, so a receiver that checks it (`verify`, with
/// a tolerance) refuses a delivery replayed later.
public enum WebhookSignature {
    public static func header(secret: [UInt8], timestamp: Int64, body: [UInt8]) -> String {
        "t=\(timestamp),v1=\(hex(secret: secret, timestamp: timestamp, body: body))"
    }

    static func hex(secret: [UInt8], timestamp: Int64, body: [UInt8]) -> String {
        var message = Array("\(timestamp).".utf8)
        message.append(contentsOf: body)
        let code = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret))
        return KeyHash.hex(code)
    }

    /// Whether `header` signs `body` under `secret`, made within `tolerance` seconds of `now`.
    public static func verify(_ header: String, secret: [UInt8], body: [UInt8], now: Int64, tolerance: Int64 = 300) -> Bool {
        var timestamp: Int64?
        var signature: Substring?
        for part in header.split(separator: ",") {
            if part.hasPrefix("t="), part.utf8.count <= 21 { timestamp = Int64(part.dropFirst(2)) }
            if part.hasPrefix("v1=") { signature = part.dropFirst(3) }
        }
        guard let timestamp, let signature, abs(now - timestamp) <= tolerance else { return false }
        let expected = hex(secret: secret, timestamp: timestamp, body: body)
        // Compared in constant time: every byte is looked at whatever differs.
        guard expected.utf8.count == signature.utf8.count else { return false }
        return zip(expected.utf8, signature.utf8).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
