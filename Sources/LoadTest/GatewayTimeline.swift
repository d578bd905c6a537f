import Foundation

/// What the gateway did during a scenario, second by second: retries, fallbacks, each deployment's breaker, the
/// output tokens each model served, and what the provider (the in-process mock) refused. Built from samples of the
/// gateway's Prometheus text and the mock's counters, one a second, and printed next to the load's own report.
public struct GatewayTimeline: Sendable {
    public struct Sample: Sendable, Hashable {
        public var retries: Double = 0
        public var fallbacks: Double = 0
        /// Per deployment: 0 closed, 1 open, 2 half-open.
        public var circuits: [String: Int] = [:]
        /// Output tokens served, per model.
        public var outputTokens: [String: Double] = [:]
        /// The provider's requests, and those it refused with 429 or failed on purpose (faults).
        public var upstreamRequests = 0
        public var upstreamRateLimited = 0
        public var upstreamFaults = 0

        public init() {}
    }

    public private(set) var samples: [Sample] = []

    public init() {}

    public mutating func append(_ sample: Sample) { samples.append(sample) }

    /// The counters a sample needs from the Prometheus text exposition (other lines are ignored).
    public static func parse(prometheus text: String) -> Sample {
        var sample = Sample()
        for line in text.split(separator: "\n") where line.hasPrefix("switchyard_") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            let name = series.prefix { $0 != "{" }
            func label(_ key: String) -> String? {
                guard let range = series.range(of: "\(key)=\"") else { return nil }
                let rest = series[range.upperBound...]
                return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
            }
            switch name {
            case "switchyard_upstream_retries_total": sample.retries += value
            case "switchyard_upstream_fallbacks_total": sample.fallbacks += value
            case "switchyard_circuit_state":
                if let deployment = label("deployment") { sample.circuits[deployment] = Int(value) }
            case "switchyard_tokens_total":
                if label("kind") == "output", let model = label("model") { sample.outputTokens[model, default: 0] += value }
            default: break
            }
        }
        return sample
    }

    /// One row a second: the changes since the previous sample, and the breakers that are not closed.
    public func render() -> [String] {
        guard samples.count > 1 else { return [] }
        let models = Set(samples.flatMap { $0.outputTokens.keys }).sorted().filter { model in
            (samples.last?.outputTokens[model] ?? 0) > (samples.first?.outputTokens[model] ?? 0)
        }
        var lines = ["| second | upstream requests | upstream 429s | upstream faults | retries | fallbacks | "
                     + models.map { "\($0) output tokens" }.joined(separator: " | ") + (models.isEmpty ? "" : " | ") + "breakers not closed |",
                     "|---|---|---|---|---|---|" + String(repeating: "---|", count: models.count) + "---|"]
        for index in 1..<samples.count {
            let now = samples[index], before = samples[index - 1]
            let states = now.circuits.filter { $0.value != 0 }.sorted { $0.key < $1.key }
                .map { "\($0.key) \($0.value == 1 ? "open" : "half-open")" }
            var row = "| \(index) | \(now.upstreamRequests - before.upstreamRequests) | \(now.upstreamRateLimited - before.upstreamRateLimited) | "
                + "\(now.upstreamFaults - before.upstreamFaults) | \(Int(now.retries - before.retries)) | \(Int(now.fallbacks - before.fallbacks)) | "
            for model in models { row += "\(Int((now.outputTokens[model] ?? 0) - (before.outputTokens[model] ?? 0))) | " }
            lines.append(row + (states.isEmpty ? "-" : states.joined(separator: ", ")) + " |")
        }
        return lines
    }

    /// Seconds from `start` until the first sample at or after it with a breaker open (nil: none opened).
    public func breakerOpened(after start: Int) -> Int? {
        guard start >= 0, start < samples.count else { return nil }
        for index in start..<samples.count where samples[index].circuits.values.contains(1) { return index - start }
        return nil
    }
}
