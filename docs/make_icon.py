"""Draw the plugin's icon (src/napari_fcnn_deblur/icon.png): a Siemens star, blurred on the left, sharp on the right.

    python docs/make_icon.py
"""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage

N = 256


def main() -> None:
    yy, xx = np.mgrid[:N, :N] - (N - 1) / 2
    r, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    star = ((np.sin(12 * theta) > 0) & (r < 0.46 * N)).astype(np.float64)
    blurred = ndimage.gaussian_filter(star, 7)
    img = np.where(xx < 0, 0.15 + 0.7 * blurred, 0.15 + 0.7 * star)
    img[:, N // 2 - 2 : N // 2 + 2] = 1.0  # the before / after divide
    rgb = np.stack([0.25 * img + 0.05, 0.55 * img + 0.1, 0.95 * img + 0.05], axis=-1)  # blue, like fluorescence
    out = Path(__file__).resolve().parents[1] / "src" / "napari_fcnn_deblur" / "icon.png"
    iio.imwrite(out, (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    print(out)


if __name__ == "__main__":
    main()
