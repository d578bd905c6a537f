import SwitchyardCore
import SwitchyardModels
import Synchronization

/// This instance's last minutes of requests, from the ledger's flushes, for the dashboard's figures that aggregates
/// cannot give: latency and time-to-first-token percentiles (sampled: at most `samplesPerMinute` each per minute),
/// errors by code, refusals, degradations by kind, the route mix (route/rule) and escalations. Keys are bounded by
/// their kinds (error codes, degradation kinds, configured routes and rules).
public final class LiveStats: Sendable {
    struct Minute {
        var minute: Int64
        var latencies: [Double] = []
        var ttfts: [Double] = []
        var seen = 0
        var errors: [String: Int] = [:]
        var degraded: [String: Int] = [:]
        var routes: [String: Int] = [:]
        var refused = 0
        var escalations = 0
    }

    private let minutes = Mutex<[Minute]>([])
    let keptMinutes: Int64
    static let samplesPerMinute = 2048
    /// Distinct route/rule pairs kept per minute at most (routes come from the configuration, but a bound is a bound).
    static let maximumRoutes = 256

    public init(keptMinutes: Int64 = 15) {
        self.keptMinutes = max(keptMinutes, 1)
    }

    func add(_ records: [LedgerRecord]) {
        guard !records.isEmpty else { return }
        minutes.withLock { minutes in
            for record in records {
                let minute = record.time / 60_000
                if minutes.last.map({ $0.minute < minute }) ?? true { minutes.append(Minute(minute: minute)) }
                // Records come nearly in order: their minute is the last one or just before it.
                guard let index = minutes.lastIndex(where: { $0.minute == minute }) else { continue }
                Self.count(record, into: &minutes[index])
            }
            if let last = minutes.last?.minute { minutes.removeAll { $0.minute <= last - keptMinutes } }
        }
    }

    private static func count(_ record: LedgerRecord, into minute: inout Minute) {
        minute.seen += 1
        // A reservoir: every request of the minute is as likely to be among the samples.
        let slot = minute.seen <= samplesPerMinute ? minute.seen - 1 : Int.random(in: 0..<minute.seen)
        if slot < samplesPerMinute {
            if slot < minute.latencies.count { minute.latencies[slot] = record.latencyMilliseconds } else { minute.latencies.append(record.latencyMilliseconds) }
            if let ttft = record.timeToFirstTokenMilliseconds, record.status < 400 {
                if slot < minute.ttfts.count { minute.ttfts[slot] = ttft } else { minute.ttfts.append(ttft) }
            }
        }
        if let error = record.error { minute.errors[error, default: 0] += 1 }
        if record.status == 429 { minute.refused += 1 }
        if let degraded = record.degraded { minute.degraded[degraded.rawValue, default: 0] += 1 }
        if let route = record.route {
            let name = "\(route)/\(record.rule ?? "-")"
            if minute.routes[name] != nil || minute.routes.count < maximumRoutes { minute.routes[name, default: 0] += 1 }
        }
        if record.escalated { minute.escalations += 1 }
    }

    /// The last `window` minutes up to `now` (Unix seconds), as the dashboard reads them.
    func snapshot(now: Int64, window: Int64) -> JSONValue {
        let first = now / 60 - max(window, 1) + 1
        let kept = minutes.withLock { $0.filter { $0.minute >= first } }
        var latencies: [Double] = [], ttfts: [Double] = []
        var errors: [String: Int] = [:], degraded: [String: Int] = [:], routes: [String: Int] = [:]
        var refused = 0, escalations = 0
        for minute in kept {
            latencies += minute.latencies
            ttfts += minute.ttfts
            errors.merge(minute.errors, uniquingKeysWith: +)
            degraded.merge(minute.degraded, uniquingKeysWith: +)
            routes.merge(minute.routes, uniquingKeysWith: +)
            refused += minute.refused
            escalations += minute.escalations
        }
        func percentiles(_ values: [Double]) -> JSONValue {
            let sorted = values.sorted()
            func at(_ q: Double) -> JSONValue {
                guard !sorted.isEmpty else { return .null }
                return .double(sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * q).rounded()))])
            }
            return ["p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "samples": .int(Int64(sorted.count))]
        }
        func object(_ counts: [String: Int]) -> JSONValue { .object(counts.mapValues { .int(Int64($0)) }) }
        return [
            "window_minutes": .int(min(window, keptMinutes)), "latency": percentiles(latencies), "ttft": percentiles(ttfts),
            "errors": object(errors), "degraded": object(degraded), "refusals": ["refused (429)": .int(Int64(refused))],
            "routes": object(routes), "escalations": .int(Int64(escalations)),
        ]
    }
}
