"""The colours of the package's figures: Okabe & Ito (2008), "Color Universal Design", which stays
distinguishable under the common colour-vision deficiencies (pathkl.plotting; each covariance family
of pathkl.families keeps one of them in every figure)."""

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
