#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SwitchyardCore

/// The serving threshold of one semantic-cache namespace, calibrated from labelled candidates: a shadow check of a
/// served hit, client feedback on one, or a near miss (a candidate under the threshold, whose request went to the
/// model anyway, compared with the cached answer at no risk). A value type with no clock and no I/O.
///
/// It starts at the configured threshold and moves only on evidence:
/// - **loosens** to the lowest step whose labels at or above it number at least `minimumLabels` and bound their
///   precision (Wilson, one-sided at `z`) at `targetPrecision` or more;
/// - **tightens** above the configured threshold when the labels there bound their precision (upper Wilson bound)
///   under `targetPrecision` (a false hit reported among few right ones raises it past that hit; one among
///   hundreds of right ones does not).
public struct ThresholdCalibrator: Sendable, Hashable {
    public struct Settings: Sendable, Hashable {
        public var base: Double
        public var floor: Double
        public var ceiling: Double
        public var step: Double
        public var targetPrecision: Double
        public var minimumLabels: Int
        /// 1.645: a one-sided 95% bound.
        public var z: Double
        /// Whether the score is a probability of a right answer (the learned verifier's): then the precision a
        /// threshold would have is estimated from the scores of every candidate seen, each corrected by the labels
        /// (see `ThresholdCalibrator`), rather than counted from the labels alone.
        public var modelled: Bool

        public init(base: Double = 0.94, floor: Double = 0.85, ceiling: Double = 0.99, step: Double = 0.01,
                    targetPrecision: Double = 0.99, minimumLabels: Int = 50, z: Double = 1.645, modelled: Bool = false) {
            self.modelled = modelled
            self.base = base
            self.floor = floor
            self.ceiling = ceiling
            self.step = step
            self.targetPrecision = targetPrecision
            self.minimumLabels = minimumLabels
            self.z = z
        }
    }

    public let settings: Settings
    /// Labels per step, from `floor`: right and wrong.
    private var right: [Int]
    private var wrong: [Int]
    /// Scores seen per step (labelled or not): the best candidate of each lookup, served or not.
    private var seen: [Int]
    public private(set) var threshold: Double

    public init(settings: Settings = Settings()) {
        self.settings = settings
        let steps = Int(((1 - settings.floor) / settings.step).rounded(.up)) + 1
        right = [Int](repeating: 0, count: max(steps, 1))
        wrong = right
        seen = right
        threshold = settings.base
    }

    /// A lookup's best candidate scored `similarity` (a modelled calibrator weighs thresholds by what they would
    /// serve). The threshold is recomputed on the next label, not here: lookups are many, labels few.
    public mutating func observe(similarity: Double) {
        guard settings.modelled, similarity.isFinite, similarity >= settings.floor else { return }
        let index = step(of: similarity)
        seen[index] = seen[index] &+ 1
    }

    private func step(of similarity: Double) -> Int {
        Self.stepIndex(of: similarity, settings: settings, steps: right.count) ?? 0
    }

    /// A label: whether the candidate at `similarity` had the right answer. Labels under `floor` say nothing about
    /// any threshold the calibrator may choose and are ignored; non-finite similarities too.
    public mutating func record(similarity: Double, correct: Bool) {
        guard similarity.isFinite, similarity >= settings.floor else { return }
        let index = step(of: similarity)
        if correct { right[index] = right[index] &+ 1 } else { wrong[index] = wrong[index] &+ 1 }
        threshold = calibrated()
    }

    public var labels: Int { right.reduce(0, &+) &+ wrong.reduce(0, &+) }

    /// The labels and observations per step: what instances sharing a calibration add up.
    public var counts: CalibrationCounts { CalibrationCounts(right: right, wrong: wrong, seen: seen) }

    /// Takes `counts` as its own (totals shared by several instances) and recomputes the threshold. Counts of another
    /// shape (other settings) are refused; negative ones count as zero.
    @discardableResult
    public mutating func replace(counts: CalibrationCounts) -> Bool {
        guard counts.right.count == right.count, counts.wrong.count == right.count, counts.seen.count == right.count else {
            return false
        }
        right = counts.right.map { max($0, 0) }
        wrong = counts.wrong.map { max($0, 0) }
        seen = counts.seen.map { max($0, 0) }
        threshold = calibrated()
        return true
    }

    /// The step a score falls in (nil under the floor, or not finite): what `counts` index.
    public func stepIndex(of similarity: Double) -> Int? {
        Self.stepIndex(of: similarity, settings: settings, steps: right.count)
    }

    static func stepIndex(of similarity: Double, settings: Settings, steps: Int) -> Int? {
        guard similarity.isFinite, similarity >= settings.floor, steps > 0 else { return nil }
        return min(Int(((similarity - settings.floor) / settings.step + 1e-9).rounded(.down)), steps - 1)
    }

    public var stepCount: Int { right.count }

    /// The lower bound of a precision of `right` out of `total` (Wilson score interval, one-sided).
    public static func lowerBound(right: Int, total: Int, z: Double) -> Double {
        guard total > 0 else { return 0 }
        let n = Double(total), p = Double(right) / n, z2 = z * z
        let centre = p + z2 / (2 * n)
        let margin = z * ((p * (1 - p) + z2 / (4 * n)) / n).squareRoot()
        return max(0, (centre - margin) / (1 + z2 / n))
    }

    /// The upper bound of a precision of `right` out of `total` (Wilson score interval, one-sided).
    public static func upperBound(right: Int, total: Int, z: Double) -> Double {
        guard total > 0 else { return 1 }
        return 1 - lowerBound(right: total - right, total: total, z: z)
    }

    /// The step index of a threshold.
    private func index(of threshold: Double) -> Int {
        min(max(Int(((threshold - settings.floor) / settings.step).rounded()), 0), right.count - 1)
    }

    /// Right and wrong labels at or above step `from`.
    private func counts(from: Int) -> (right: Int, wrong: Int) {
        var r = 0, w = 0
        for index in from..<right.count {
            r = r &+ right[index]
            w = w &+ wrong[index]
        }
        return (r, w)
    }

    private func calibrated() -> Double {
        let base = index(of: settings.base)
        // Tighten: the lowest step at or above the base where the labels do not show, at the same confidence, a
        // precision under the target (one wrong answer among a few right ones does; among hundreds it does not).
        var start = base
        while start < index(of: settings.ceiling) {
            let (r, w) = counts(from: start)
            if r + w == 0 || Self.upperBound(right: r, total: r + w, z: settings.z) >= settings.targetPrecision { break }
            start += 1
        }
        if start > base { return settings.floor + Double(start) * settings.step }
        if settings.modelled { return modelledThreshold(base: base) }
        // Loosen: the lowest step whose labels at or above it (every hit served there) are enough and bound their
        // precision at the target.
        var chosen = base
        for candidate in stride(from: base - 1, through: 0, by: -1) where right[candidate] + wrong[candidate] > 0 {
            // Only down to where labels are: a step nobody has labelled says nothing about its own hits.
            let (r, w) = counts(from: candidate)
            if r + w >= settings.minimumLabels, Self.lowerBound(right: r, total: r + w, z: settings.z) >= settings.targetPrecision {
                chosen = candidate
            }
        }
        return settings.floor + Double(chosen) * settings.step
    }
}

extension ThresholdCalibrator {
    /// Whether candidates scoring from `score` up to the threshold may still be served where a second verdict agrees
    /// with them (the agreement band of `rules_or_learned`): not once the threshold has risen above its base, nor
    /// while the labels in that range show on their own, at the calibration's confidence, a precision under the
    /// target (one wrong answer among a few closes it). Open while no label says otherwise.
    public func agreementOpen(from score: Double) -> Bool {
        guard threshold <= settings.base else { return false }
        guard let low = stepIndex(of: max(score, settings.floor)) else { return true }
        var r = 0, w = 0
        for index in low..<max(low, index(ofThreshold: threshold)) {
            r = r &+ right[index]
            w = w &+ wrong[index]
        }
        return Self.upperBound(right: r, total: r + w, z: settings.z) >= settings.targetPrecision
    }
}

extension ThresholdCalibrator {
    /// The modelled estimate. The verifier's probability p says how likely a candidate is right, but on the
    /// training data's scale, not this namespace's: here P(right | p) = σ(logit p + δ), one shift δ fitted to the
    /// labels (maximum likelihood with a weak normal prior N(0, 2²), so that labels all right give a finite shift),
    /// and its lower confidence bound δ − z/√information taken. The precision a threshold t would have is then the
    /// mean of σ(logit p + δ_low) over the scores seen at or above t. The threshold loosens from the base, one step at
    /// a time, while that bound stays at or above the target, only once `minimumLabels` labels exist and only as far
    /// down as labels reach; it tightens above the base while even σ(logit p + δ_high) misses the target there.
    /// Every candidate's score informs the estimate; the labels fit one number. (Platt scaling's two numbers, slope
    /// too, moved the threshold further but unstably on the evaluation stream: 0.74 at one point with 150 labels.)
    func modelledThreshold(base: Int) -> Double {
        let value = { (index: Int) in settings.floor + Double(index) * settings.step }
        guard labels >= settings.minimumLabels, let (shift, deviation) = fittedShift() else { return value(base) }
        let precision = { (from: Int, shift: Double) -> Double? in
            var expected = 0.0, count = 0
            for index in from..<seen.count where seen[index] > 0 {
                expected += Double(seen[index]) / (1 + exp(-(self.logit(index) + shift)))
                count += seen[index]
            }
            return count > 0 ? expected / Double(count) : nil
        }
        let low = shift - settings.z * deviation, high = shift + settings.z * deviation
        var tightened = base
        while tightened < index(ofThreshold: settings.ceiling), let estimate = precision(tightened, high),
              estimate < settings.targetPrecision {
            tightened += 1
        }
        if tightened > base { return value(tightened) }
        let lowestLabelled = right.indices.first { right[$0] + wrong[$0] > 0 } ?? base
        var chosen = base
        while chosen > lowestLabelled, let estimate = precision(chosen - 1, low), estimate >= settings.targetPrecision {
            chosen -= 1
        }
        return value(chosen)
    }

    func index(ofThreshold threshold: Double) -> Int {
        min(max(Int(((threshold - settings.floor) / settings.step).rounded()), 0), right.count - 1)
    }

    /// The logit of the score a step stands for: its middle, kept off 0 and 1 so that it is finite.
    func logit(_ index: Int) -> Double {
        let p = min(max(settings.floor + (Double(index) + 0.5) * settings.step, 1e-4), 1 - 1e-4)
        return log(p / (1 - p))
    }

    /// The fitted shift δ and its standard deviation: Newton's method on the labels' log likelihood plus the prior.
    func fittedShift() -> (Double, Double)? {
        let priorPrecision = 1.0 / 4
        var shift = 0.0, information = priorPrecision
        for _ in 0..<50 {
            var gradient = -priorPrecision * shift
            information = priorPrecision
            for index in right.indices where right[index] + wrong[index] > 0 {
                let n = Double(right[index] + wrong[index])
                let q = 1 / (1 + exp(-(logit(index) + shift)))
                gradient += Double(right[index]) - n * q
                information += n * q * (1 - q)
            }
            let move = gradient / information
            shift += min(max(move, -2), 2)
            if abs(move) < 1e-9 { break }
        }
        guard shift.isFinite, information.isFinite, information > 0 else { return nil }
        return (shift, 1 / information.squareRoot())
    }
}

/// Calibrators per namespace (a namespace is one tenant's: calibration never crosses tenants), bounded: past
/// `maximumNamespaces` the least recently labelled one is forgotten and starts again from the base threshold.
/// Labels (right, wrong) and observed scores per step of a calibrator.
public struct CalibrationCounts: Sendable, Hashable {
    public var right: [Int]
    public var wrong: [Int]
    public var seen: [Int]

    public init(right: [Int], wrong: [Int], seen: [Int]) {
        self.right = right
        self.wrong = wrong
        self.seen = seen
    }

    public init(steps: Int) {
        self.init(right: Array(repeating: 0, count: steps), wrong: Array(repeating: 0, count: steps),
                  seen: Array(repeating: 0, count: steps))
    }

    public var isEmpty: Bool { !(right + wrong + seen).contains { $0 != 0 } }

    /// Element-wise sum (same shape; a shorter one adds what it has).
    public static func + (lhs: CalibrationCounts, rhs: CalibrationCounts) -> CalibrationCounts {
        func add(_ a: [Int], _ b: [Int]) -> [Int] { a.indices.map { $0 < b.count ? a[$0] &+ b[$0] : a[$0] } }
        return CalibrationCounts(right: add(lhs.right, rhs.right), wrong: add(lhs.wrong, rhs.wrong), seen: add(lhs.seen, rhs.seen))
    }
}

public struct CalibratorTable: Sendable {
    public let settings: ThresholdCalibrator.Settings
    public let maximumNamespaces: Int
    private var calibrators: [String: ThresholdCalibrator] = [:]
    private var recency = RecencyQueue()

    public init(settings: ThresholdCalibrator.Settings = .init(), maximumNamespaces: Int = 100_000) {
        self.settings = settings
        self.maximumNamespaces = max(1, maximumNamespaces)
    }

    public func threshold(for namespace: String) -> Double {
        calibrators[namespace]?.threshold ?? settings.base
    }

    /// `ThresholdCalibrator.agreementOpen(from:)` for `namespace` (open without labels).
    public func agreementOpen(for namespace: String, from score: Double) -> Bool {
        calibrators[namespace]?.agreementOpen(from: score) ?? true
    }

    public var count: Int { calibrators.count }

    /// A lookup's best candidate in `namespace` scored `similarity` (see `ThresholdCalibrator.observe`). Only a
    /// namespace that has labels keeps observations: lookups alone never create calibration state.
    public mutating func observe(namespace: String, similarity: Double) {
        guard settings.modelled, calibrators[namespace] != nil else { return }
        calibrators[namespace]?.observe(similarity: similarity)
    }

    public mutating func record(namespace: String, similarity: Double, correct: Bool) {
        if calibrators[namespace] == nil, calibrators.count >= maximumNamespaces, let oldest = recency.removeOldest() {
            calibrators[oldest] = nil
        }
        calibrators[namespace, default: ThresholdCalibrator(settings: settings)].record(similarity: similarity, correct: correct)
        recency.touch(namespace)
    }

    /// Replaces a namespace's counts with `counts` (the totals of every instance), creating it when they hold labels.
    public mutating func replace(namespace: String, counts: CalibrationCounts) {
        guard calibrators[namespace] != nil || counts.right.contains(where: { $0 > 0 }) || counts.wrong.contains(where: { $0 > 0 }) else {
            return
        }
        if calibrators[namespace] == nil, calibrators.count >= maximumNamespaces, let oldest = recency.removeOldest() {
            calibrators[oldest] = nil
        }
        var calibrator = calibrators[namespace] ?? ThresholdCalibrator(settings: settings)
        guard calibrator.replace(counts: counts) else { return }
        calibrators[namespace] = calibrator
        recency.touch(namespace)
    }

    /// Whether a namespace has calibration state (labels).
    public func contains(_ namespace: String) -> Bool { calibrators[namespace] != nil }
}

/// Keys in order of their last use, oldest first out, in amortised O(1): a touch appends a stamped entry, and
/// entries whose key was touched again later are skipped when they come out (and dropped when they pile up).
struct RecencyQueue: Sendable {
    private var entries: [(key: String, stamp: UInt64)] = []
    private var head = 0
    private var stamps: [String: UInt64] = [:]
    private var clock: UInt64 = 0

    var count: Int { stamps.count }

    mutating func touch(_ key: String) {
        clock &+= 1
        stamps[key] = clock
        entries.append((key, clock))
        // More than twice as many entries as keys: keep only the live ones.
        if entries.count - head > 2 * stamps.count + 64 {
            entries = entries[head...].filter { stamps[$0.key] == $0.stamp }
            head = 0
        }
    }

    mutating func remove(_ key: String) {
        stamps[key] = nil
    }

    /// The least recently touched key, removed.
    mutating func removeOldest() -> String? {
        while head < entries.count {
            let entry = entries[head]
            head += 1
            if head > 1024, head * 2 > entries.count {
                entries.removeFirst(head)
                head = 0
            }
            if stamps[entry.key] == entry.stamp {
                stamps[entry.key] = nil
                return entry.key
            }
        }
        return nil
    }
}

/// The gateway's calibration state: a `CalibratorTable` under a short lock, and the scores of recent hits so that
/// feedback on an entry (which names only the entry) labels the score it was served at. Both bounded.
public final class SemanticCalibration: Sendable {
    struct State: Sendable {
        var table: CalibratorTable
        /// Entry id → the calibration key and score of its latest hit, oldest forgotten first past `maximumHits`.
        var hits: [String: (key: String, score: Double)] = [:]
        var recency = RecencyQueue()
        /// When shared: what this instance added since its last flush, per key (at most `maximumKeys` keys).
        var pending: [String: CalibrationCounts] = [:]
    }

    private let state: Locked<State>
    let maximumHits: Int
    let maximumKeys: Int
    /// Whether the counts are shared with other instances (`takePending` and `apply` then carry them).
    public let shared: Bool
    /// Called when an entry is served through calibration (to remember it where other instances' feedback finds it).
    private let onServed: (@Sendable (_ entryID: String, _ key: String, _ score: Double) -> Void)?
    public let steps: Int

    public init(settings: ThresholdCalibrator.Settings, maximumKeys: Int = 100_000, maximumHits: Int = 100_000,
                shared: Bool = false, onServed: (@Sendable (_ entryID: String, _ key: String, _ score: Double) -> Void)? = nil) {
        state = Locked(State(table: CalibratorTable(settings: settings, maximumNamespaces: maximumKeys)))
        self.maximumHits = max(1, maximumHits)
        self.maximumKeys = max(1, maximumKeys)
        self.shared = shared
        self.onServed = onServed
        steps = ThresholdCalibrator(settings: settings).stepCount
    }

    /// Adds to the pending deltas of `key` (shared calibration only; a full map drops the event, as the table would).
    private func pend(_ state: inout State, key: String, score: Double, change: (inout CalibrationCounts, Int) -> Void) {
        guard shared, let index = ThresholdCalibrator.stepIndex(of: score, settings: state.table.settings, steps: steps) else { return }
        guard state.pending[key] != nil || state.pending.count < maximumKeys else { return }
        change(&state.pending[key, default: CalibrationCounts(steps: steps)], index)
    }

    private func pendLabel(_ state: inout State, key: String, score: Double, correct: Bool) {
        pend(&state, key: key, score: score) { counts, index in
            if correct { counts.right[index] &+= 1 } else { counts.wrong[index] &+= 1 }
        }
    }

    /// The deltas since the last call, emptied: for the shared store.
    public func takePending() -> [String: CalibrationCounts] {
        state.withLock { state in
            defer { state.pending = [:] }
            return state.pending
        }
    }

    /// Deltas that could not be written: kept for the next flush.
    public func restorePending(_ deltas: [String: CalibrationCounts]) {
        state.withLock { state in
            for (key, counts) in deltas where state.pending[key] != nil || state.pending.count < maximumKeys {
                state.pending[key] = (state.pending[key] ?? CalibrationCounts(steps: steps)) + counts
            }
        }
    }

    /// Totals read from the shared store: each key's counts become them, plus what is pending here (added since the
    /// flush those totals include).
    public func apply(totals: [String: CalibrationCounts]) {
        state.withLock { state in
            for (key, counts) in totals {
                state.table.replace(namespace: key, counts: state.pending[key].map { counts + $0 } ?? counts)
            }
        }
    }

    /// Whether `key` has calibration state here.
    public func knows(_ key: String) -> Bool { state.withLock { $0.table.contains(key) } }

    /// The serving threshold of `key` (a tenant's model: calibration never crosses tenants).
    public func threshold(for key: String) -> Double {
        state.withLock { $0.table.threshold(for: key) }
    }

    /// The serving threshold of `key`, and whether its agreement band from `score` is open (`agreementOpen`).
    public func threshold(for key: String, agreementFrom score: Double) -> (threshold: Double, agreementOpen: Bool) {
        state.withLock { ($0.table.threshold(for: key), $0.table.agreementOpen(for: key, from: score)) }
    }

    /// A label: the candidate at `score` was (or was not) a right answer.
    public func record(key: String, score: Double, correct: Bool) {
        state.withLock { state in
            state.table.record(namespace: key, similarity: score, correct: correct)
            pendLabel(&state, key: key, score: score, correct: correct)
        }
    }

    /// A lookup's best candidate scored `score`, served or not: what a threshold would serve, for the modelled
    /// estimate.
    public func observe(key: String, score: Double) {
        state.withLock { state in
            // Only keys with labels keep observations (here, or, shared, at another instance: known after a sync).
            guard state.table.settings.modelled, state.table.contains(key) else { return }
            state.table.observe(namespace: key, similarity: score)
            pend(&state, key: key, score: score) { counts, index in counts.seen[index] &+= 1 }
        }
    }

    /// Remembers the score an entry was served at, for feedback on it.
    public func served(entryID: String, key: String, score: Double) {
        state.withLock { state in
            if state.hits[entryID] == nil, state.hits.count >= maximumHits, let oldest = state.recency.removeOldest() {
                state.hits[oldest] = nil
            }
            state.hits[entryID] = (key, score)
            state.recency.touch(entryID)
        }
        onServed?(entryID, key, score)
    }

    /// Forgets an entry's hit here (its feedback was taken through the shared store).
    public func forget(entryID: String) {
        state.withLock { state in
            state.hits[entryID] = nil
            state.recency.remove(entryID)
        }
    }

    /// Feedback from `tenant` on an entry's latest hit: labels it, once. False when the hit is not known (forgotten,
    /// never served through calibration, or another tenant's).
    @discardableResult
    public func feedback(entryID: String, tenant: String, correct: Bool) -> Bool {
        state.withLock { state in
            guard let hit = state.hits[entryID], hit.key.hasPrefix(tenant + "\u{0}") else { return false }
            state.hits[entryID] = nil
            state.recency.remove(entryID)
            state.table.record(namespace: hit.key, similarity: hit.score, correct: correct)
            pendLabel(&state, key: hit.key, score: hit.score, correct: correct)
            return true
        }
    }

    /// The key calibration is kept under: one per tenant and model.
    public static func key(tenant: String, model: String) -> String {
        tenant + "\u{0}" + model
    }
}
