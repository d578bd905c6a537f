#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// L2-regularised logistic regression fitted by full-batch Adam: deterministic (a fixed order of sums, no
/// randomness), so the same data gives the same weights.
public struct LogisticRegression: Sendable, Hashable {
    public var weights: [Double]
    public var bias: Double

    public init(weights: [Double], bias: Double) {
        self.weights = weights
        self.bias = bias
    }

    public struct Settings: Sendable, Hashable {
        public var l2 = 1.0
        public var iterations = 300
        public var learningRate = 0.05

        public init(l2: Double = 1.0, iterations: Int = 300, learningRate: Double = 0.05) {
            self.l2 = l2
            self.iterations = iterations
            self.learningRate = learningRate
        }
    }

    /// Fits `labels` (0 or 1) from `rows`, each a feature vector of the same length.
    public static func fit(rows: [[Double]], labels: [Double], settings: Settings = Settings()) -> LogisticRegression {
        let count = min(rows.count, labels.count)
        let dimension = rows.first?.count ?? 0
        var model = LogisticRegression(weights: [Double](repeating: 0, count: dimension), bias: 0)
        guard count > 0 else { return model }
        var first = [Double](repeating: 0, count: dimension + 1)
        var second = first
        var gradient = first
        let (beta1, beta2) = (0.9, 0.999)
        for step in 1...max(settings.iterations, 1) {
            for index in gradient.indices { gradient[index] = 0 }
            for row in 0..<count {
                let error = model.probability(rows[row]) - labels[row]
                rows[row].withUnsafeBufferPointer { features in
                    for index in 0..<dimension { gradient[index] += error * features[index] }
                }
                gradient[dimension] += error
            }
            let scale = 1 / Double(count)
            for index in 0..<dimension { gradient[index] = gradient[index] * scale + settings.l2 * model.weights[index] * scale }
            gradient[dimension] *= scale
            let correction1 = 1 - pow(beta1, Double(step)), correction2 = 1 - pow(beta2, Double(step))
            for index in 0...dimension {
                first[index] = beta1 * first[index] + (1 - beta1) * gradient[index]
                second[index] = beta2 * second[index] + (1 - beta2) * gradient[index] * gradient[index]
                let change = settings.learningRate * (first[index] / correction1) / ((second[index] / correction2).squareRoot() + 1e-8)
                if index < dimension { model.weights[index] -= change } else { model.bias -= change }
            }
        }
        return model
    }

    public func logit(_ features: [Double]) -> Double {
        var sum = bias
        features.withUnsafeBufferPointer { values in
            weights.withUnsafeBufferPointer { weights in
                for index in 0..<min(values.count, weights.count) { sum += values[index] * weights[index] }
            }
        }
        return sum
    }

    public func probability(_ features: [Double]) -> Double {
        1 / (1 + exp(-logit(features)))
    }
}

/// Per-feature mean and standard deviation (1 for a constant feature, so nothing divides by zero).
public enum Standardisation {
    public static func fit(_ rows: [[Double]]) -> (mean: [Double], scale: [Double]) {
        let dimension = rows.first?.count ?? 0
        let count = Double(max(rows.count, 1))
        var mean = [Double](repeating: 0, count: dimension), scale = mean
        for row in rows { for index in 0..<dimension { mean[index] += row[index] } }
        for index in 0..<dimension { mean[index] /= count }
        for row in rows { for index in 0..<dimension { scale[index] += (row[index] - mean[index]) * (row[index] - mean[index]) } }
        for index in 0..<dimension {
            let deviation = (scale[index] / count).squareRoot()
            scale[index] = deviation > 1e-9 ? deviation : 1
        }
        return (mean, scale)
    }
}
