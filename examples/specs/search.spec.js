// Searches the catalogue and opens the first result.
const { test, expect } = require("appwright");

test("finds a product by name", async ({ device }) => {
  await device.getById("search").fill("mug");
  await expect(device.getByText("Blue mug")).toBeVisible();
  await device.getByText("Blue mug").tap();
  await expect(device.getByText("Add to cart")).toBeVisible();
});
