import Synchronization

/// How P2 jobs are grouped for the providers' batch APIs (YAML `jobs: batch:`).
public struct BatchSettings: Sendable, Hashable {
    /// `window_seconds`: how long a batch collects requests before it is sent.
    public var window: Duration = .seconds(60)
    /// `max_requests`: a batch is sent as soon as it holds this many (OpenAI takes up to 50,000, Anthropic 100,000).
    public var maxRequests = 1000
    /// `poll_seconds`: how often a sent batch's status is asked.
    public var pollInterval: Duration = .seconds(30)
    /// `min_time_left_seconds`: a job with less time than this before its deadline is sent on its own.
    public var minimumTimeLeft: Duration = .seconds(3600)
    /// `live_margin_seconds`: a batch that has not answered this long before the job's deadline is given up for a
    /// call on its own, so a late batch costs full price instead of the job.
    public var liveMargin: Duration = .seconds(600)
    /// `max_pending`: requests waiting for batches at most (collected and sent together); past it jobs run alone.
    public var maxPending = 50_000

    public init() {}
}

/// Handed by a job's worker to a P2 job's request: the request may wait for its provider's batch API instead of
/// a call of its own. Shared by the attempts of one run, so that a batch that failed or came too late is not
/// tried again by the next attempt (which then reserves the deployment's budget and calls the provider).
public final class BatchTicket: Sendable {
    /// Wall-clock nanoseconds by which the job must end.
    public let deadline: Int64
    public let settings: BatchSettings
    private let joinedBatch: @Sendable () -> Void
    private let given = Atomic<Bool>(false)

    /// - Parameter joined: Called once, when the request joins a batch: its worker is free for other jobs meanwhile.
    public init(deadline: Int64, settings: BatchSettings, joined: @escaping @Sendable () -> Void) {
        self.deadline = deadline
        self.settings = settings
        self.joinedBatch = joined
    }

    /// Whether a request for `route` goes through the batch API at `now`: the route batches, the ticket was not
    /// given up, and the job has time enough left for a batch.
    public func applies(to route: ModelRoute, now: Int64) -> Bool {
        guard route.batch == .auto, !given.load(ordering: .relaxed) else { return false }
        let (left, overflow) = deadline.subtractingReportingOverflow(now)
        return !overflow && left >= settings.minimumTimeLeft.nanoseconds
    }

    /// The last moment to wait for a batch: `live_margin` before the deadline.
    public var waitUntil: Int64 {
        let (until, overflow) = deadline.subtractingReportingOverflow(settings.liveMargin.nanoseconds)
        return overflow ? .min : until
    }

    /// After a failed or late batch: the next attempt is a call of its own.
    public func giveUp() { given.store(true, ordering: .relaxed) }

    public func joined() { joinedBatch() }
}

extension ConfigLoader {
    /// `batch: {window_seconds, max_requests, poll_seconds, min_time_left_seconds, live_margin_seconds, max_pending}`.
    static func parseBatch(_ reader: MappingReader) throws(ConfigError) -> BatchSettings {
        var settings = BatchSettings()
        func duration(_ key: String, in range: ClosedRange<Double>) throws(ConfigError) -> Duration? {
            try reader.double(key, in: range).map { .nanoseconds(Int64(($0 * 1e9).rounded())) }
        }
        settings.window = try duration("window_seconds", in: 0.001...86_400) ?? settings.window
        settings.maxRequests = try reader.int("max_requests", in: 1...50_000) ?? settings.maxRequests
        settings.pollInterval = try duration("poll_seconds", in: 0.001...3600) ?? settings.pollInterval
        settings.minimumTimeLeft = try duration("min_time_left_seconds", in: 0...2_592_000) ?? settings.minimumTimeLeft
        settings.liveMargin = try duration("live_margin_seconds", in: 0...2_592_000) ?? settings.liveMargin
        settings.maxPending = try reader.int("max_pending", in: 1...10_000_000) ?? settings.maxPending
        guard settings.minimumTimeLeft > settings.liveMargin else {
            throw ConfigError(path: reader.child("min_time_left_seconds"), "must be more than live_margin_seconds")
        }
        try reader.finish()
        return settings
    }
}
