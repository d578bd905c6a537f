/// Scores a router on labelled prompts as RouteLLM does (and as `reference_baselines.json` states its conventions):
/// prompts ordered by the router's score, highest first (ties in file order); the share sent to the strong model
/// swept from 0 to 1 in 101 steps; at each step the quality is the strong model's correctness on the prompts sent
/// to it and the weak model's on the rest.
public struct RouterEvaluation: Sendable, Hashable {
    /// Mean correctness of each model alone, and of the best of the two per prompt.
    public var weakMean: Double
    public var strongMean: Double
    public var oracleMean: Double
    /// Mean quality at each strong-call share 0, 0.01, …, 1.
    public var curve: [Double]

    /// - Parameters:
    ///   - scores: Higher means "send to the strong model".
    ///   - weak, strong: Each model's correctness per prompt (1 right, 0 wrong; a score such as MT-Bench's works too).
    public init(scores: [Double], weak: [Double], strong: [Double]) {
        // One score and two labels per prompt; extra entries in any list are ignored.
        let count = min(scores.count, weak.count, strong.count)
        let order = (0..<count).sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        let total = max(count, 1)
        weakMean = weak.prefix(count).reduce(0, +) / Double(total)
        strongMean = strong.prefix(count).reduce(0, +) / Double(total)
        oracleMean = zip(weak.prefix(count), strong.prefix(count)).reduce(0) { $0 + max($1.0, $1.1) } / Double(total)
        var curve: [Double] = []
        curve.reserveCapacity(101)
        var quality = weak.prefix(count).reduce(0, +)
        var sent = 0
        for step in 0...100 {
            let target = (step * count + 50) / 100
            while sent < target {
                quality += strong[order[sent]] - weak[order[sent]]
                sent += 1
            }
            curve.append(quality / Double(total))
        }
        self.curve = curve
    }

    /// Performance gap recovered at each step: 0 at the weak model's mean, 1 at the strong model's.
    public var gapRecovered: [Double] {
        let gap = strongMean - weakMean
        return curve.map { gap == 0 ? 0 : ($0 - weakMean) / gap }
    }

    /// Average performance gap recovered: the trapezoid integral of `gapRecovered` over the share.
    public var apgr: Double {
        let points = gapRecovered
        var sum = 0.0
        for index in 1..<points.count { sum += (points[index - 1] + points[index]) / 2 }
        return sum / Double(points.count - 1)
    }

    /// The smallest strong-call share that recovers `fraction` of the gap (CPT(50%) for 0.5).
    public func callPerformanceThreshold(_ fraction: Double) -> Double {
        Double(gapRecovered.firstIndex { $0 >= fraction } ?? 100) / 100
    }

    /// The smallest strong-call share whose mean quality reaches `fraction` of the strong model's.
    public func strongShare(forQuality fraction: Double) -> Double {
        Double(curve.firstIndex { $0 >= fraction * strongMean } ?? 100) / 100
    }

    /// The four figures `reference_baselines.json` lists for each router.
    public var summary: Summary {
        Summary(apgr: apgr, cpt50: callPerformanceThreshold(0.5), cpt80: callPerformanceThreshold(0.8),
                strongShareAt95: strongShare(forQuality: 0.95))
    }

    public struct Summary: Sendable, Hashable {
        public var apgr: Double
        public var cpt50: Double
        public var cpt80: Double
        public var strongShareAt95: Double

        public init(apgr: Double, cpt50: Double, cpt80: Double, strongShareAt95: Double) {
            self.apgr = apgr
            self.cpt50 = cpt50
            self.cpt80 = cpt80
            self.strongShareAt95 = strongShareAt95
        }

        /// The mean of several summaries (the random router over seeds).
        public static func mean(_ summaries: [Summary]) -> Summary {
            let count = Double(max(summaries.count, 1))
            return Summary(apgr: summaries.map(\.apgr).reduce(0, +) / count, cpt50: summaries.map(\.cpt50).reduce(0, +) / count,
                           cpt80: summaries.map(\.cpt80).reduce(0, +) / count,
                           strongShareAt95: summaries.map(\.strongShareAt95).reduce(0, +) / count)
        }
    }

    // MARK: Baselines

    /// Scores from a seeded generator: the random router.
    public static func randomScores(count: Int, seed: UInt64) -> [Double] {
        var state = seed
        return (0..<count).map { _ in
            // SplitMix64.
            state &+= 0x9E37_79B9_7F4A_7C15
            var mixed = state
            mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
            mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
            return Double((mixed ^ (mixed >> 31)) >> 11) / Double(1 << 53)
        }
    }

    /// The oracle: the strong model exactly where it is right and the weak one wrong.
    public static func oracleScores(weak: [Double], strong: [Double]) -> [Double] {
        zip(weak, strong).map { $1 - $0 }
    }
}
