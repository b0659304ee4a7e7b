"""The shared interface of every Fisher approximation G (Eq. 7–8, 11).

Every approximation is one class with a declarative :class:`~ngdref.fisher.spec.FisherSpec`
(name, equations, damping policy, options, FLOP model) and the **structured path**:

* :meth:`FisherApproximation.precondition` — G⁻¹ Jᵀ v / N for a function-space v, from the
  signals δ_l, a_{l−1} (S.64–S.68) with N×N or CN×CN matrices, never forming G (P×P) nor
  the full Jacobian J (CN×P);
* :meth:`FisherApproximation.precondition_factors` — the same direction as per-layer factors
  (left_l, right_l) of small inner size, where the approximation has them (``None`` otherwise), so
  that training can apply it a block of rows at a time without a parameter-sized Δθ;
* :meth:`FisherApproximation.coefficient` — Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11);
* its α where the paper gives one (:meth:`analytic_alpha`, Eq. 12) and its infinite-width
  Θ̄(x′, x) from the analytic kernels (:meth:`analytic_theta_bar`, Section 4, Appendix E).

The explicit P×P twins that check every structured path live in the tests
(``tests/oracles.py``), not here.

Conventions: the MSE loss L = ‖y − f‖²/(2N) (Eq. 3), so ∇_θL = Jᵀ(f − y)/N; the
natural-gradient direction is Δθ = G⁻¹∇_θL (Eq. 7) and the coefficient matrix
Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11), x′ first as in :mod:`ngdref.ntk` and
:mod:`ngdref.kernels`. Function-space vectors are (C, N) arrays (output-major when
flattened). ``damping`` ρ ≥ 0 enters G exactly once, as in Eq. 8 (G = F + ρI) or as the
paper's definition of the approximation says (K-FAC, Eq. 20); ρ = 0 is the
pseudo-inverse (zero-damping limit) with the cut-off of :mod:`ngdref.linalg`. An object
holds no state beyond its network, damping and options: the cross-entropy output metric
Λ̃ (S.159) is an argument of :meth:`precondition`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from ..backend import namespace_of
from ..errors import NgdrefError
from ..jacobian import jvp, vjp
from ..network import Network, Signals
from .spec import FisherSpec


def factor_product(factors: list) -> list:
    """The per-layer arrays left_l @ right_l of a :meth:`FisherApproximation.precondition_factors` list."""
    return [left @ right for left, right in factors]


class FisherApproximation(abc.ABC):
    """One approximation G. Subclasses define ``spec`` and implement :meth:`precondition`
    (and usually :meth:`_theta_bar`, which otherwise applies :meth:`precondition` column by column)."""

    spec: ClassVar[FisherSpec]

    def __init__(self, network: Network, damping: float | None = None, rtol: float | None = None):
        self.network = network
        self.damping, self.damping_source = self.spec.resolve_damping(damping)
        self.rtol = rtol

    @property
    def name(self) -> str:
        return self.spec.name

    # ---- description -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.spec.name, "damping": self.damping, "damping_source": self.damping_source,
                "equation": self.spec.equations, "summary": self.spec.summary}

    def analytic_alpha(self, n_samples: int) -> float | None:
        """α of the isotropic condition Θ̄(x, x) = αI (Eq. 12) for this finite network, or ``None``
        where the paper gives none (the reason: :meth:`alpha_note`)."""
        return None

    def alpha_note(self) -> str:
        return ""

    def step_needs_learning_rate(self, n_samples: int | None = None) -> str | None:
        """Why η = c/α (with the measured mean diagonal of Θ̄ where the paper gives no α) is no
        usable step for this network and N = ``n_samples`` training samples (``None``: whatever
        does not depend on N), so a learning rate must be given; ``None`` if it is."""
        return None

    def learning_rate(self, lr_scale: float, alpha: float, theta_bar) -> tuple[float, str]:
        """The step η = c/α of Corollary 4.2 (0 < c < 2 converges) and how it was chosen."""
        return lr_scale / alpha, "c / α"

    # ---- structured path ---------------------------------------------------------------
    @abc.abstractmethod
    def precondition(self, signals: Signals, v, output_metric=None) -> list:
        """G⁻¹ Jᵀ v / N for a function-space vector v of shape (C, N); per-layer θ_l-shaped arrays.

        ``output_metric`` Λ̃ (CN × CN) gives the cross-entropy FIM G = JᵀΛ̃J/N + ρI (S.159)
        where ``spec.cross_entropy``; ``None`` is the MSE FIM. The arrays returned are new (no
        views of the signals or of cached state): callers scale and apply them in place."""

    def precondition_factors(self, signals: Signals, v, output_metric=None) -> list | None:
        """:meth:`precondition`'s G⁻¹Jᵀv/N in factored form, where the approximation has one; ``None``
        (the default) where it has not, and callers use :meth:`precondition`.

        A list with one pair (left_l, right_l) per layer, left_l of shape (M_l, r_l) and right_l
        (r_l, fan_l) with a small inner size r_l (N, CN or CN + 1), in the network's dtype, such that
        ``left_l @ right_l`` is the layer's array of :meth:`precondition` (the same product where
        :meth:`precondition` is built from these factors: :func:`factor_product`). Most directions are
        such products: Jᵀz's layer is (Σ_k z_k ⊙ δ_l^{(k)})ᵀ a_{l−1} (S.64; exact, bd, tridiag, gd),
        unit-wise's rows are a_Sᵀ-combinations of a_{l−1}'s rows (Eq. 23), K-FAC's is δ_lᵀ·(small
        CN-row matrix) (Eq. 20). A caller can then apply the direction a block of rows at a time,
        left_l[r0:r1] @ right_l, and never hold a parameter-sized Δθ (:func:`ngdref.train.ngd_step`).
        The factors may be views of the signals: callers read them and do not write to them."""
        return None

    @classmethod
    def has_factored_direction(cls) -> bool:
        """Whether :meth:`precondition_factors` is provided (not the base class's ``None``): training then applies
        the direction a block of rows at a time and holds no parameter-sized Δθ (:func:`ngdref.train.ngd_step`)."""
        return cls.precondition_factors is not FisherApproximation.precondition_factors

    def precondition_factors_many(self, signals: Signals, vs: list, output_metric=None) -> list | None:
        """:meth:`precondition_factors` for several vectors v of the same signals, one list of factors per v;
        ``None`` where there is no factored form. The default calls it once per v; an approximation whose
        G⁻¹ costs a factorisation per call (unit-wise: one per unit) shares it between the vectors."""
        out = [self.precondition_factors(signals, v, output_metric) for v in vs]
        return None if any(f is None for f in out) else out

    def direction(self, params, x, y, signals: Signals | None = None) -> list:
        """Δθ = G⁻¹ ∇_θ L = G⁻¹ Jᵀ (f − y)/N (Eq. 7), per layer; ``y`` is (N, C)."""
        s = signals if signals is not None else self.network.signals(params, x)
        return self.precondition(s, (s.f - y).T)

    def coefficient(self, s_prime: Signals, s: Signals | None = None):
        """Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11), (CN′, CN), with G built on the training set x.

        x′ first, as :func:`ngdref.ntk.structured_ntk`: ``coefficient(s_test, s_train)`` is
        Θ̄(x′, x); ``coefficient(s_train)`` (``s`` None: x = x′) is Θ̄(x, x) on the training set.
        """
        return self._theta_bar(s_prime, None) if s is None else self._theta_bar(s, s_prime)

    def coefficient_pair(self, s_prime: Signals, s: Signals):
        """(Θ̄(x, x), Θ̄(x′, x)), Θ̄(x′, x) = J(x′) G⁻¹ J(x)ᵀ / N (Eq. 11) with G built on the training
        set x (signals ``s``) and x′ the test set (``s_prime``; x′ first, as :meth:`coefficient`): the
        training coefficient of the dynamics (Eq. 10) and its test-set twin. Default: two
        :meth:`coefficient` calls; an approximation that can share its factorisations between the two
        (unit-wise) overrides it."""
        return self.coefficient(s), self.coefficient(s_prime, s)

    def flops(self, shape, damping: float) -> dict:
        """This object's FLOP model ``{"direction": (flops, formula), "coefficient": (…)}`` for a
        :class:`~ngdref.fisher.cost.Shape`: the spec's (``spec.flops``); an approximation whose cost
        depends on its options (block partition: k, g) overrides it."""
        if self.spec.flops is None:
            raise NgdrefError(f"{self.spec.title} has no FLOP model (spec.flops)")
        return self.spec.flops(shape, damping)

    def _theta_bar(self, s: Signals, s_prime: Signals | None):
        """Θ̄(x′, x) with G built on the signals ``s`` of x (``s_prime`` None: x′ = x). Generic:
        from CN preconditioned columns, Θ̄[:, j] = J(x′) G⁻¹ J(x)ᵀ e_j / N."""
        sp = s if s_prime is None else s_prime
        xp = namespace_of(s.f)
        c, n = s.f.shape[1], s.n
        cols = []
        for j in range(c * n):
            e = xp.reshape(xp.astype(xp.arange(c * n) == j, s.f.dtype), (c, n))
            cols.append(xp.reshape(jvp(sp, self.precondition(s, e)), (-1,)))
        return xp.stack(cols, axis=1)

    # ---- matrix-free products on arbitrary parameter vectors (ngdref.fisher.operators) -----
    # v is given per layer (θ_l-shaped arrays, the flat order of ngdref.network); results are new
    # arrays of the same shapes. Neither G (P×P) nor J (CN×P) is formed: each family builds G v and
    # G⁻¹ v from the signals δ_l, a_{l−1} with N- or CN-sized matrices, which are kept in ``cache``
    # (a dict owned by one operator on one set of signals) so that repeated products (CG, Lanczos)
    # factor them once. The MSE FIM only (no cross-entropy output metric Λ̃).
    def fisher_matvec(self, signals: Signals, v, cache: dict | None = None) -> list:
        """G v (damping included, as in G's definition)."""
        raise NgdrefError(f"{self.spec.title} provides no matrix-free G v (fisher_matvec)")

    def inverse_matvec(self, signals: Signals, v, cache: dict | None = None) -> list:
        """G⁻¹ v for ρ > 0, the pseudo-inverse G⁺ v at ρ = 0 (the zero-damping limit), for any v."""
        raise NgdrefError(f"{self.spec.title} provides no matrix-free G⁻¹ v (inverse_matvec)")

    def preconditioned_fisher_matvec(self, signals: Signals, v, cache: dict | None = None) -> list:
        """G⁻¹F v with F = JᵀJ/N (Eq. 8, MSE): G⁻¹Jᵀ(Jv)/N = :meth:`precondition` of the
        function-space vector J v. Its nonzero eigenvalues are those of Θ̄(x, x) = JG⁻¹Jᵀ/N
        (Eq. 11; AB and BA share their nonzero spectrum)."""
        return self.precondition(signals, jvp(signals, v))

    def preconditioned_fisher_rmatvec(self, signals: Signals, v, cache: dict | None = None) -> list:
        """(G⁻¹F)ᵀ v = F G⁻¹ v (G and F symmetric): Jᵀ(J G⁻¹v)/N."""
        u = jvp(signals, self.inverse_matvec(signals, v, cache))
        return vjp(signals, u / float(signals.n))

    @staticmethod
    def _layer_jvp(signals: Signals, layer: int, v_l):
        """∇_{θ_l}f v_l = Σ_i δ_{l,i}^{(k)} (a_{l−1} v_lᵀ)_i (S.64), a (C, N) function-space vector."""
        xp = namespace_of(v_l)
        return xp.sum(signals.delta[layer - 1] * (signals.a[layer - 1] @ v_l.T), axis=-1)

    # ---- infinite width ----------------------------------------------------------------
    def analytic_theta_bar(self, cross, train, forster: bool = False):
        """Θ̄(x′, x) at infinite width from the analytic kernels (:func:`ngdref.kernels.analytic_kernels`):
        ``cross`` = kernels(x′, x), ``train`` = kernels(x, x); the C = 1 block (N′, N).
        NgdrefError where the paper derives none."""
        raise NgdrefError(f"no analytic Θ̄(x′, x) for {self.spec.title} in the paper; use the empirical kernel "
                          "(--kernel empirical)")

    def analytic_theta_bar_train(self, train):
        """The infinite-width Θ̄(x, x) on the training set, for isotropy checks (Eq. 12): an (N, N) array,
        or a SciPy ``LinearOperator`` where the approximation applies it to vectors without forming it
        (exact and layer-wise NGD: Σ_l w_l Θ_l(Θ_l⁻¹v) from the Cholesky factors, O(N²) per vector
        instead of a 2N³ solve). Default: :meth:`analytic_theta_bar` of the training set itself."""
        return self.analytic_theta_bar(train, train)

    def analytic_theta_bar_operator(self, cross, train):
        """The infinite-width Θ̄(x′, x) for applying to a few vectors (the predictions of Eq. 14): an
        (N′, N) array, or a SciPy ``LinearOperator`` where the approximation applies it without forming
        it (exact NGD: r ↦ Θ(x′, x)(Θ⁻¹r) from the factor of Θ). Default: :meth:`analytic_theta_bar`."""
        return self.analytic_theta_bar(cross, train)
