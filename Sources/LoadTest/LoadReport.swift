import Histogram
public import SwitchyardModels

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The result of a load run: the summary text, the JSON result and a self-contained HTML report.
public struct LoadReport: Sendable {
    public let text: String
    public let json: JSONValue
    let snapshot: LoadStatistics.Snapshot
    let plan: LoadPlan

    public init(_ s: LoadStatistics.Snapshot, wall: Double, cpu: Double, dailyVolume: Int, plan: LoadPlan) {
        self.snapshot = s
        self.plan = plan
        func ms(_ histogram: Histogram<UInt64>, _ percentile: Double) -> Double {
            histogram.totalCount == 0 ? 0 : Double(histogram.valueAtPercentile(percentile)) / 1000
        }
        func percentiles(_ histogram: Histogram<UInt64>, scale: Double = 1000) -> JSONValue {
            guard histogram.totalCount > 0 else { return .null }
            return ["p50": .double(Double(histogram.valueAtPercentile(50)) / scale),
                    "p95": .double(Double(histogram.valueAtPercentile(95)) / scale),
                    "p99": .double(Double(histogram.valueAtPercentile(99)) / scale),
                    "max": .double(Double(histogram.max) / scale), "count": .int(Int64(histogram.totalCount))]
        }
        let completed = s.succeeded + s.errorCount
        let costPerRequest = s.priced > 0 ? Double(s.costNanoUSD) / 1e9 / Double(s.priced) : 0
        let cpuShare = cpu / max(wall, 0.001)
        var lines = [
            "requests: \(s.sent) sent, \(completed) completed, \(s.succeeded) ok in \(String(format: "%.1f", wall)) s "
                + "(\(String(format: "%.1f", Double(completed) / max(wall, 0.001))) req/s)",
            String(format: "latency ms: p50 %.1f  p95 %.1f  p99 %.1f  max %.1f", ms(s.latency, 50), ms(s.latency, 95),
                   ms(s.latency, 99), Double(s.latency.max) / 1000),
        ]
        if s.timeToFirstToken.totalCount > 0 {
            lines.append(String(format: "time to first token ms: p50 %.1f  p95 %.1f  p99 %.1f", ms(s.timeToFirstToken, 50),
                                ms(s.timeToFirstToken, 95), ms(s.timeToFirstToken, 99)))
        }
        if s.tokensPerSecond.totalCount > 0 {
            lines.append(String(format: "output tokens/s per request: p50 %.1f  p5 %.1f", Double(s.tokensPerSecond.valueAtPercentile(50)) / 1000,
                                Double(s.tokensPerSecond.valueAtPercentile(5)) / 1000))
        }
        if s.graded + s.ungraded > 0 {
            lines.append(String(format: "accuracy: %.3f (%d of %d answers right by their recorded correctness; %d not a recorded answer)",
                                s.graded > 0 ? Double(s.correct) / Double(s.graded) : 0, s.correct, s.graded, s.ungraded))
        }
        lines.append("errors: " + (s.errors.isEmpty ? "none" : s.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))
        if !s.cache.isEmpty {
            lines.append("cache: " + s.cache.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        for (name, group) in s.groups.sorted(by: { $0.key < $1.key }) {
            let degraded = group.degraded.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            lines.append("\(plan.groupHeader ?? "group") \(name): \(group.total) answered: \(group.served) served (\(group.cacheHits) from a cache), "
                         + "\(group.degraded.values.reduce(0, +)) degraded\(degraded.isEmpty ? "" : " (\(degraded))"), \(group.refused) refused (429), "
                         + "\(group.failed) failed"
                         + (group.latency.totalCount == 0 ? "" : String(format: "; answered in p50 %.0f ms, p99 %.0f ms, the last at %d s",
                                                                       ms(group.latency, 50), ms(group.latency, 99), group.lastAnswer)))
        }
        lines.append(String(format: "cost: $%.6f in total, $%.6f per request; at %d requests a day: $%.2f a day, $%.2f a month",
                            Double(s.costNanoUSD) / 1e9, costPerRequest, dailyVolume, costPerRequest * Double(dailyVolume),
                            costPerRequest * Double(dailyVolume) * 30))
        lines.append(String(format: "load generator CPU: %.0f%% of one core%@", cpuShare * 100,
                            cpuShare > 0.8 * Double(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))) ? " (saturated: the numbers above are a floor, not the server's)" : ""))
        let json: JSONValue = [
            "url": .string(plan.baseURL), "api": .string(plan.api.rawValue), "model": .string(plan.model), "stream": .bool(plan.stream),
            "seconds": .double(wall), "sent": .int(Int64(s.sent)), "completed": .int(Int64(completed)),
            "succeeded": .int(Int64(s.succeeded)), "throughput_rps": .double(Double(completed) / max(wall, 0.001)),
            "latency_ms": percentiles(s.latency), "ttft_ms": percentiles(s.timeToFirstToken),
            "output_tokens_per_second": percentiles(s.tokensPerSecond), "output_tokens": .int(Int64(s.outputTokens)),
            "errors": .object(s.errors.mapValues { .int(Int64($0)) }), "cache": .object(s.cache.mapValues { .int(Int64($0)) }),
            "cost_usd": .double(Double(s.costNanoUSD) / 1e9), "cost_per_request_usd": .double(costPerRequest),
            "graded": .int(Int64(s.graded)), "correct": .int(Int64(s.correct)), "ungraded": .int(Int64(s.ungraded)),
            "projected_daily_cost_usd": .double(costPerRequest * Double(dailyVolume)),
            "projected_monthly_cost_usd": .double(costPerRequest * Double(dailyVolume) * 30),
            "completed_per_second": .array(s.completedPerSecond.map { .int(Int64($0)) }),
            "errors_per_second": .array(s.errorsPerSecond.map { .int(Int64($0)) }),
            "cache_hits_per_second": .array(s.cacheHitsPerSecond.map { .int(Int64($0)) }),
            "cost_usd_per_second": .array(s.costNanoUSDPerSecond.map { .double(Double($0) / 1e9) }),
            "p50_ms_per_second": .array(s.secondLatencies.map { .double(ms($0, 50)) }),
            "p99_ms_per_second": .array(s.secondLatencies.map { .double(ms($0, 99)) }),
            "generator_cpu_share_of_one_core": .double(cpuShare),
            "groups": .object(s.groups.mapValues { group in
                ["served": .int(Int64(group.served)), "cache_hits": .int(Int64(group.cacheHits)),
                 "degraded": .object(group.degraded.mapValues { .int(Int64($0)) }), "refused": .int(Int64(group.refused)),
                 "failed": .int(Int64(group.failed)), "latency_ms": percentiles(group.latency),
                 "last_answer_second": .int(Int64(group.lastAnswer))]
            }),
        ]
        self.text = lines.joined(separator: "\n")
        self.json = json
    }

    /// A self-contained HTML page: the summary, and SVG charts of latency over time, throughput and errors, the
    /// latency and TTFT distributions, error and cache-hit rates, and cost over time. No scripts, no network.
    public func html() -> String {
        let s = snapshot
        let p50 = s.secondLatencies.map { $0.totalCount == 0 ? 0 : Double($0.valueAtPercentile(50)) / 1000 }
        let p99 = s.secondLatencies.map { $0.totalCount == 0 ? 0 : Double($0.valueAtPercentile(99)) / 1000 }
        let levels = [0.0, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]
        func curve(_ histogram: Histogram<UInt64>) -> [Double] {
            histogram.totalCount == 0 ? [] : levels.map { Double(histogram.valueAtPercentile($0)) / 1000 }
        }
        let total = max(1, s.succeeded + s.errorCount)
        // Shares of each second's completions, and the spend accumulated over the run.
        let share = { (counts: [Int]) in zip(counts, s.completedPerSecond).map { $1 == 0 ? 0 : Double($0) * 100 / Double($1) } }
        var spent = 0.0
        let cumulativeCost = s.costNanoUSDPerSecond.map { nano -> Double in
            spent += Double(nano) / 1e9
            return spent
        }
        var rows = s.errors.sorted { $0.key < $1.key }.map { ("error \($0.key)", $0.value) }
        rows += s.cache.sorted { $0.key < $1.key }.map { ("cache \($0.key)", $0.value) }
        let table = rows.map { "<tr><td>\(Self.escape($0.0))</td><td>\($0.1)</td><td>\(String(format: "%.1f%%", Double($0.1) * 100 / Double(total)))</td></tr>" }
            .joined()
        return """
            <!doctype html><html><head><meta charset="utf-8"><title>switchyard load: \(Self.escape(plan.model))</title>
            <style>body{font:14px system-ui,sans-serif;margin:24px;color:#222}pre{background:#f4f4f4;padding:12px}
            svg{background:#fff;border:1px solid #ddd;margin:8px 16px 8px 0}table{border-collapse:collapse}
            td{border:1px solid #ddd;padding:4px 10px}</style></head><body>
            <h1>switchyard load</h1><p>\(Self.escape(plan.baseURL)) · \(plan.api.rawValue) · \(Self.escape(plan.model)) · \(plan.stream ? "streaming" : "not streaming")</p>
            <pre>\(Self.escape(text))</pre>
            \(Self.lineChart(title: "Latency over time (ms)", x: "elapsed second", series: [("p50", p50, "#1f77b4"), ("p99", p99, "#d62728")]))
            \(Self.lineChart(title: "Throughput and errors (per second)", x: "elapsed second",
                             series: [("completed", s.completedPerSecond.map(Double.init), "#2ca02c"), ("errors", s.errorsPerSecond.map(Double.init), "#d62728")]))
            \(Self.lineChart(title: "Latency by percentile (ms)", x: "percentile: " + levels.map { String(format: "%g", $0) }.joined(separator: " "),
                             series: [("latency", curve(s.latency), "#1f77b4"), ("time to first token", curve(s.timeToFirstToken), "#ff7f0e")]))
            \(Self.lineChart(title: "Error and cache-hit rates (% of each second's answers)", x: "elapsed second",
                             series: [("errors", share(s.errorsPerSecond), "#d62728"), ("cache hits", share(s.cacheHitsPerSecond), "#9467bd")]))
            \(Self.lineChart(title: "Cost so far (USD)", x: "elapsed second", series: [("cost", cumulativeCost, "#8c564b")]))
            <h2>Errors and cache</h2><table><tr><td>kind</td><td>requests</td><td>share</td></tr>\(table)</table>
            </body></html>
            """
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// An SVG line chart with a zero-based y axis, its maximum marked, and a legend.
    static func lineChart(title: String, x: String, series: [(name: String, values: [Double], color: String)]) -> String {
        let width = 640.0, height = 260.0, left = 56.0, bottom = 36.0, top = 28.0, right = 12.0
        let count = max(2, series.map(\.values.count).max() ?? 2)
        let peak = max(series.flatMap(\.values).max() ?? 1, 1e-9)
        func point(_ index: Int, _ value: Double) -> String {
            let px = left + (width - left - right) * Double(index) / Double(count - 1)
            let py = height - bottom - (height - bottom - top) * value / peak
            return String(format: "%.1f,%.1f", px, py)
        }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\">"
        svg += "<text x=\"\(Int(left))\" y=\"18\" font-weight=\"bold\">\(escape(title))</text>"
        svg += "<line x1=\"\(left)\" y1=\"\(height - bottom)\" x2=\"\(width - right)\" y2=\"\(height - bottom)\" stroke=\"#999\"/>"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(height - bottom)\" stroke=\"#999\"/>"
        svg += "<text x=\"4\" y=\"\(Int(top) + 4)\" font-size=\"11\">\(String(format: "%.4g", peak))</text>"
        svg += "<text x=\"4\" y=\"\(Int(height - bottom))\" font-size=\"11\">0</text>"
        svg += "<text x=\"\(Int(left))\" y=\"\(Int(height) - 8)\" font-size=\"11\">\(escape(x))</text>"
        for (offset, line) in series.enumerated() where !line.values.isEmpty {
            let points = line.values.enumerated().map { point($0.offset, $0.element) }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"2\" points=\"\(points)\"/>"
            svg += "<text x=\"\(Int(width) - 150)\" y=\"\(18 + 14 * offset)\" font-size=\"12\" fill=\"\(line.color)\">\(escape(line.name))</text>"
        }
        return svg + "</svg>"
    }
}
