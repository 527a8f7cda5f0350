// AppWright spec: search
const { test, expect } = require("appwright");

test("search", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
