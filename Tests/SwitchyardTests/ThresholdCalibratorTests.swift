import Caching
import Testing

/// Thresholds that learn: never looser without enough labels, tighter after false hits, one state per namespace.
@Suite struct ThresholdCalibratorTests {
    @Test func withoutLabelsOrWithTooFewItKeepsTheConfiguredThreshold() {
        var calibrator = ThresholdCalibrator()
        #expect(calibrator.threshold == 0.94)
        for index in 0..<49 { calibrator.record(similarity: 0.86 + Double(index % 8) * 0.01, correct: true) }
        #expect(abs(calibrator.threshold - 0.94) < 1e-9)
        // Labels that say nothing: under the floor, or not a number.
        calibrator.record(similarity: 0.5, correct: true)
        calibrator.record(similarity: .nan, correct: true)
        #expect(calibrator.labels == 49)
    }

    @Test func manyRightLabelsBelowTheThresholdLoosenItOnlyAsFarAsTheyGo() {
        var calibrator = ThresholdCalibrator()
        // 400 right answers between 0.90 and 0.94: the bound on their precision clears 0.99 (all right, n ≥ 268).
        for index in 0..<400 { calibrator.record(similarity: 0.90 + Double(index % 4) * 0.01 + 0.005, correct: true) }
        #expect(abs(calibrator.threshold - 0.90) < 1e-9, "\(calibrator.threshold)")
        // One wrong answer at 0.905 among them: the bound there falls under 0.99, so the 0.90 step is given up.
        calibrator.record(similarity: 0.905, correct: false)
        #expect(calibrator.threshold > 0.90 + 1e-9, "\(calibrator.threshold)")
    }

    @Test func aFalseHitAmongFewRightOnesTightensPastIt() {
        var calibrator = ThresholdCalibrator()
        for _ in 0..<10 { calibrator.record(similarity: 0.951, correct: true) }
        #expect(abs(calibrator.threshold - 0.94) < 1e-9)
        calibrator.record(similarity: 0.955, correct: false)
        #expect(calibrator.threshold > 0.955, "\(calibrator.threshold)")
        // Among many right ones, one false hit keeps the precision above the target: no tightening.
        var steady = ThresholdCalibrator()
        for _ in 0..<300 { steady.record(similarity: 0.951, correct: true) }
        steady.record(similarity: 0.955, correct: false)
        #expect(abs(steady.threshold - 0.94) < 1e-9, "\(steady.threshold)")
        // The point estimate of 40 right and 1 wrong (97.6%) is under the target, but not confidently: no tightening.
        var fewer = ThresholdCalibrator()
        for _ in 0..<40 { fewer.record(similarity: 0.951, correct: true) }
        fewer.record(similarity: 0.955, correct: false)
        #expect(abs(fewer.threshold - 0.94) < 1e-9, "\(fewer.threshold)")
        #expect(ThresholdCalibrator.upperBound(right: 0, total: 0, z: 1.645) == 1)
    }

    /// The agreement band (`rules_or_learned`): open without labels, closed by a wrong answer in its range among
    /// few right ones (not by one below it, nor by one among hundreds of right ones), and closed once the threshold
    /// has risen above its base.
    @Test func theAgreementBandClosesOnWrongLabelsInItsRange() {
        let settings = PairVerifier.calibrationSettings(base: 0.966, targetPrecision: 0.99)
        var calibrator = ThresholdCalibrator(settings: settings)
        #expect(calibrator.agreementOpen(from: 0.5))
        calibrator.record(similarity: 0.45, correct: false)
        calibrator.record(similarity: 0.98, correct: true)
        #expect(calibrator.agreementOpen(from: 0.5), "a label under the band, or above the threshold, says nothing of it")
        calibrator.record(similarity: 0.8, correct: false)
        #expect(!calibrator.agreementOpen(from: 0.5))
        #expect(calibrator.agreementOpen(from: 0.85), "a band that starts above the wrong label")
        var many = ThresholdCalibrator(settings: settings)
        for index in 0..<800 { many.record(similarity: 0.6 + Double(index % 30) * 0.01, correct: true) }
        many.record(similarity: 0.8, correct: false)
        #expect(many.agreementOpen(from: 0.5), "one wrong among 800 right bounds the precision above 0.99")
        var tightened = ThresholdCalibrator(settings: settings)
        for _ in 0..<5 { tightened.record(similarity: 0.97, correct: true) }
        tightened.record(similarity: 0.975, correct: false)
        #expect(tightened.threshold > 0.966)
        #expect(!tightened.agreementOpen(from: 0.5))
        var table = CalibratorTable(settings: settings)
        table.record(namespace: "a", similarity: 0.7, correct: false)
        #expect(!table.agreementOpen(for: "a", from: 0.5) && table.agreementOpen(for: "b", from: 0.5))
    }

    @Test func namespacesAreCalibratedApartAndTheTableIsBounded() {
        var table = CalibratorTable(maximumNamespaces: 3)
        for _ in 0..<10 { table.record(namespace: "tenant-a|ctx", similarity: 0.951, correct: true) }
        table.record(namespace: "tenant-a|ctx", similarity: 0.955, correct: false)
        #expect(table.threshold(for: "tenant-a|ctx") > 0.955)
        #expect(table.threshold(for: "tenant-b|ctx") == 0.94)
        for name in ["n1", "n2", "n3"] { table.record(namespace: name, similarity: 0.95, correct: true) }
        #expect(table.count == 3)
        // The least recently labelled namespace (tenant-a's) was forgotten: it starts again from the base.
        #expect(table.threshold(for: "tenant-a|ctx") == 0.94)

        // Least recently labelled, not least recently created: m1, labelled again and again, outlives m2.
        var lru = CalibratorTable(maximumNamespaces: 3)
        lru.record(namespace: "m1", similarity: 0.955, correct: false)
        lru.record(namespace: "m2", similarity: 0.95, correct: true)
        lru.record(namespace: "m3", similarity: 0.95, correct: true)
        for _ in 0..<5000 { lru.record(namespace: "m1", similarity: 0.7, correct: true) }
        lru.record(namespace: "m4", similarity: 0.95, correct: true)
        #expect(lru.count == 3)
        #expect(lru.threshold(for: "m1") > 0.955, "m1 kept its state")
    }

    /// The learned verifier's calibration: its probability corrected by one fitted shift, weighed over what each
    /// threshold would serve.
    static func modelled() -> ThresholdCalibrator {
        ThresholdCalibrator(settings: .init(base: 0.96, floor: 0.5, ceiling: 0.9999, step: 0.001, targetPrecision: 0.99,
                                            modelled: true))
    }

    @Test func theModelledEstimateNeverLoosensOnObservationsAlone() {
        var calibrator = Self.modelled()
        for index in 0..<10_000 { calibrator.observe(similarity: 0.9 + Double(index % 100) * 0.001) }
        #expect(abs(calibrator.threshold - 0.96) < 1e-9)
        // Under the minimum number of labels, however right: still the base.
        for _ in 0..<49 { calibrator.record(similarity: 0.93, correct: true) }
        #expect(abs(calibrator.threshold - 0.96) < 1e-9, "\(calibrator.threshold)")
    }

    @Test func theModelledEstimateLoosensWhereLabelsShowTheScaleUnderstatesAndTightensWhereItOverstates() {
        // Lookups scoring 0.90–0.999, and labels there all right: the probability understates how often it is right,
        // so thresholds below the base serve at the target.
        var loose = Self.modelled()
        for index in 0..<2000 { loose.observe(similarity: 0.90 + Double(index % 100) * 0.001) }
        for index in 0..<300 { loose.record(similarity: 0.90 + Double(index % 100) * 0.001, correct: true) }
        #expect(loose.threshold < 0.95, "\(loose.threshold)")
        #expect(loose.threshold >= 0.90, "never below the lowest label: \(loose.threshold)")
        // The same lookups, but one label in ten wrong: the probability overstates, and the threshold rises.
        var tight = Self.modelled()
        for index in 0..<2000 { tight.observe(similarity: 0.90 + Double(index % 100) * 0.001) }
        for index in 0..<300 { tight.record(similarity: 0.90 + Double(index % 100) * 0.001, correct: index % 10 != 0) }
        #expect(tight.threshold > 0.96, "\(tight.threshold)")
        // A modelled table keeps observations only for namespaces that have labels.
        var table = CalibratorTable(settings: Self.modelled().settings, maximumNamespaces: 10)
        table.observe(namespace: "nobody", similarity: 0.95)
        #expect(table.count == 0)
    }

    @Test func theWilsonBoundIsTheTextbookOne() {
        // 95 of 100 at z = 1.96: 0.8882 (the standard two-sided 95% Wilson interval's lower end).
        #expect(abs(ThresholdCalibrator.lowerBound(right: 95, total: 100, z: 1.96) - 0.8882) < 0.0005)
        #expect(ThresholdCalibrator.lowerBound(right: 0, total: 0, z: 1.645) == 0)
    }
}
