public import SwitchyardCore

/// The jobs of one process: a pure value type with time passed in (Unix nanoseconds), behind a lock in
/// `InMemoryJobStore`. Waiting jobs queue per priority, oldest first; a cancelled job leaves its queue lazily (skipped
/// when it reaches the head), so every operation but `position` is O(1) amortised. Bounded: waiting jobs in all
/// (`maxQueued`) and per tenant, finished jobs by count (`maxRetained`, oldest dropped) and age (`retention`).
public struct JobBook: Sendable {
    public let settings: JobSettings
    private(set) var jobs: [String: JobRecord] = [:]
    /// Per priority, ids in submission order; `heads` is where each queue's live part starts.
    private var queues: [[String]] = [[], [], []]
    private var heads = [0, 0, 0]
    private var waitingCounts = [0, 0, 0]
    private var tenantWaiting: [String: Int] = [:]
    /// Running jobs' workers.
    private var running: [String: String] = [:]
    /// Finished jobs in the order they finished, for retention.
    private var finished: [(id: String, at: Int64)] = []
    private var finishedHead = 0

    public init(settings: JobSettings) {
        self.settings = settings
    }

    public var waiting: Int { waitingCounts.reduce(0, +) }
    public var retained: Int { finished.count - finishedHead }

    public func job(_ id: String) -> JobRecord? { jobs[id] }

    public mutating func submit(_ job: JobRecord, now: Int64) throws(JobRefusal) -> Int {
        prune(now: now)
        guard waiting < settings.maxQueued else { throw .full }
        guard tenantWaiting[job.caller.tenant, default: 0] < settings.maxQueuedPerTenant else { throw .tenantFull }
        var job = job
        job.status = .queued
        let ahead = waitingCounts[...job.priority.rawValue].reduce(0, +)
        jobs[job.id] = job
        queues[job.priority.rawValue].append(job.id)
        waitingCounts[job.priority.rawValue] += 1
        tenantWaiting[job.caller.tenant, default: 0] += 1
        return ahead
    }

    public func position(_ id: String) -> Int? {
        guard let job = jobs[id], job.status == .queued else { return nil }
        let level = job.priority.rawValue
        var ahead = waitingCounts[..<level].reduce(0, +)
        for index in heads[level]..<queues[level].count {
            let other = queues[level][index]
            if other == id { return ahead }
            if jobs[other]?.status == .queued { ahead += 1 }
        }
        return nil
    }

    public mutating func claim(worker: String, now: Int64) -> JobClaim? {
        prune(now: now)
        for level in 0..<queues.count {
            while heads[level] < queues[level].count {
                let id = queues[level][heads[level]]
                heads[level] += 1
                guard var job = jobs[id], job.status == .queued else { continue }
                leaveQueue(job)
                job.status = .running
                job.attempts += 1
                job.startedAt = now
                jobs[id] = job
                running[id] = worker
                compact(level)
                return JobClaim(job: job, worker: worker, token: id)
            }
            compact(level)
        }
        return nil
    }

    public func holds(_ claim: JobClaim) -> Bool {
        jobs[claim.job.id]?.status == .running && running[claim.job.id] == claim.worker
    }

    public mutating func finish(_ claim: JobClaim, _ outcome: JobRecord.Outcome, now: Int64) -> JobRecord? {
        guard holds(claim), let job = jobs[claim.job.id] else { return nil }
        let done = job.finished(outcome, now: now)
        running[job.id] = nil
        retain(done, now: now)
        return done
    }

    public mutating func cancel(_ id: String, now: Int64) -> JobRecord? {
        guard var job = jobs[id] else { return nil }
        guard !job.status.isFinal else { return job }
        if job.status == .queued { leaveQueue(job) }
        running[id] = nil
        job.status = .cancelled
        job.finishedAt = now
        retain(job, now: now)
        return job
    }

    private mutating func leaveQueue(_ job: JobRecord) {
        waitingCounts[job.priority.rawValue] -= 1
        let tenant = job.caller.tenant
        let left = tenantWaiting[tenant, default: 1] - 1
        tenantWaiting[tenant] = left > 0 ? left : nil
    }

    private mutating func retain(_ job: JobRecord, now: Int64) {
        jobs[job.id] = job
        finished.append((job.id, now))
        prune(now: now)
    }

    /// Drops finished jobs past their retention or beyond the count kept.
    private mutating func prune(now: Int64) {
        let retention = settings.retention.nanoseconds
        while finishedHead < finished.count {
            let (id, at) = finished[finishedHead]
            guard retained > settings.maxRetained || at <= now &- retention else { break }
            finishedHead += 1
            if jobs[id]?.status.isFinal == true { jobs[id] = nil }
        }
        if finishedHead > 1024, finishedHead * 2 > finished.count {
            finished.removeFirst(finishedHead)
            finishedHead = 0
        }
    }

    /// Forgets a queue's consumed part once it is most of the array.
    private mutating func compact(_ level: Int) {
        if heads[level] > 1024, heads[level] * 2 > queues[level].count {
            queues[level].removeFirst(heads[level])
            heads[level] = 0
        } else if heads[level] == queues[level].count {
            queues[level].removeAll(keepingCapacity: true)
            heads[level] = 0
        }
    }
}

/// The embedded default's jobs: this process's, gone when it stops.
public final class InMemoryJobStore: JobStore {
    private let book: Locked<JobBook>

    public init(settings: JobSettings) {
        book = Locked(JobBook(settings: settings))
    }

    public var isDurable: Bool { false }

    public func submit(_ job: JobRecord) async throws -> Int {
        try book.withLock { book throws(JobRefusal) in try book.submit(job, now: job.createdAt) }
    }

    public func job(_ id: String) async throws -> JobRecord? { book.withLock { $0.job(id) } }

    public func position(_ id: String) async throws -> Int? { book.withLock { $0.position(id) } }

    public func claim(worker: String, now: Int64) async throws -> JobClaim? {
        book.withLock { $0.claim(worker: worker, now: now) }
    }

    public func renew(_ claim: JobClaim, now: Int64) async throws -> Bool { book.withLock { $0.holds(claim) } }

    public func finish(_ claim: JobClaim, _ outcome: JobRecord.Outcome, now: Int64) async throws -> JobRecord? {
        book.withLock { $0.finish(claim, outcome, now: now) }
    }

    public func cancel(_ id: String, now: Int64) async throws -> JobRecord? { book.withLock { $0.cancel(id, now: now) } }
}
